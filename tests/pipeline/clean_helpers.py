"""Texts and cleaning configs that test_clean.py and test_rules.py share."""

from __future__ import annotations

from dataclasses import replace

from pipeline.clean import CleanConfig

# Clean English prose that every web rule keeps: sentences end in punctuation, no repeats.
PROSE = """The harbour town wakes slowly in the winter, when the fishing boats stay tied to the quay.
Most mornings the baker opens first, and the smell of bread drifts down to the water.
Children walk to school along the sea wall, counting the gulls that sit on the railings.

By noon the market square fills with traders selling cheese, wool and smoked fish.
An old man repairs nets by the church, and he will tell anyone who stops about the storm of 1953.
Visitors rarely come before April, so the cafes close early and the streets are quiet.

In the evening the lighthouse keeper climbs the tower to check the lamp and the weather.
She writes the wind speed in a notebook that her grandfather started sixty years ago.
Nobody in the town remembers a night when the light failed to shine over the rocks."""

WEB = CleanConfig.for_source("web")
C4_ONLY = replace(WEB, gopher_quality=False, gopher_repetition=False)
GOPHER_ONLY = replace(WEB, c4=False)
REPETITION_ONLY = replace(WEB, c4=False, gopher_quality=False)
