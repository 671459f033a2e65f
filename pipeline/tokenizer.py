"""Byte-level BPE tokenizer: training on a uniform sample of cleaned documents, saving, loading.

Training uses HF `tokenizers` (GPT-2's byte-level scheme: every byte is a base token, so no input
is ever unknown). Bulk encoding goes through `pipeline.fast_encode.Encoder`, which runs the same
vocabulary on tiktoken's faster engine when its checks find the two agree.

Special tokens hold ids 0..5 but are deliberately NOT registered as HF "added tokens": HF matches
added tokens inside raw text, so a document containing the string "[BOS]" would otherwise encode
to the real BOS id and forge a document boundary. Here they are plain vocabulary entries that no
merge produces, reachable only by id.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from common.files import atomic_write_bytes
from pipeline.clean import CleanConfig, CleanStats, clean_text

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BOS]"]
PAD_ID = SPECIALS.index("[PAD]")
BOS_ID = SPECIALS.index("[BOS]")
MIN_VOCAB_SIZE = len(SPECIALS) + 256

log = logging.getLogger("pipeline")


class TokenizerError(ValueError):
    """A tokenizer that cannot be trained or used here: no text to train on, a vocabulary the corpus
    cannot reach, or a tokenizer.json without this pipeline's specials at ids 0-5."""


# 16384 = 2^14 ids: they fit uint16 in the token store (half the bytes of int32). For the ~45M-param
# model (gpt-45m, d_model 768) a tied 16k embedding is 16384 * 768 = 12.6M params, ~26% of the model;
# GPT-2's 50257 would need 38.6M, more than the 35.4M in its blocks, spent mostly on rare tokens the
# model sees too seldom to learn. A 16k vocabulary still averages ~4 bytes per token on English web
# text (GPT-2's 50k: ~4.5), so a context window covers nearly as much text.
DEFAULT_VOCAB_SIZE = 16384
# `sample_corpus` cleans a random fraction of the raw documents, expected to total this multiple of
# the sample size: the margin covers the documents cleaning drops and the error of estimating the
# corpus size from its file sizes.
OVERSAMPLE = 1.2


def _strip_added_tokens(tok: Tokenizer) -> Tokenizer:
    """A copy of `tok` with no HF added tokens, so no string in a document can encode to a special id."""
    data = json.loads(tok.to_str())
    data["added_tokens"] = []
    return Tokenizer.from_str(json.dumps(data))


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, min_frequency: int = 2, show_progress: bool = False
) -> Tokenizer:
    """Train a byte-level BPE: SPECIALS at ids 0..5, then the 256 byte tokens, then merges in order.

    Ids in merge order is what lets tiktoken (which ranks merges by token id) reproduce it exactly.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size {vocab_size} is below the {MIN_VOCAB_SIZE} specials and bytes")
    tok = Tokenizer(models.BPE())
    # No prefix space: a document's first word encodes as it would anywhere after a newline, and
    # decode(encode(x)) == x exactly. use_regex: GPT-2's split (words, numbers, punctuation, spaces).
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer)
    return _strip_added_tokens(tok)


def save_tokenizer(tok: Tokenizer, path: str | Path) -> Path:
    """Write tokenizer.json atomically: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, tok.to_str(pretty=True).encode())
    return path


def load_tokenizer(path: str | Path, max_len: int | None = None, pad: bool = False) -> Tokenizer:
    """Load tokenizer.json for general use; added tokens are dropped, so specials never match text.

    max_len truncates encodings to that many tokens; pad pads each batch with [PAD] (id 0) to its
    longest member, or to max_len when that is given. As specials are not registered, `decode`
    renders them as their names ("[BOS]") rather than skipping them.
    """
    tok = _strip_added_tokens(Tokenizer.from_file(str(path)))
    if max_len is not None:
        tok.enable_truncation(max_length=max_len)
    if pad:
        tok.enable_padding(pad_id=PAD_ID, pad_token=SPECIALS[PAD_ID], length=max_len)
    return tok


def _key(data: bytes, seed: int, person: bytes = b"") -> int:
    """A uniform 64-bit number from a seeded hash of `data`; a different `person` gives an independent one."""
    salt = seed.to_bytes(8, "little", signed=True)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, key=salt, person=person).digest(), "little")


def sample_texts(texts: Iterable[str], sample_bytes: int, seed: int = 0) -> list[str]:
    """A uniform random sample of whole documents totalling about `sample_bytes` UTF-8 bytes.

    Each document gets a key from a seeded hash of its text, i.e. a uniform random number that
    does not depend on where it appears in the stream; the sample is the documents with the
    smallest keys, taken until their total reaches `sample_bytes` (the last one may overshoot).
    A max-heap keeps only those, so memory stays ~sample_bytes however long the stream. The
    result is deterministic given the seed and the set of documents, and in stream order.
    """
    if sample_bytes <= 0:
        raise ValueError("sample_bytes must be positive")
    heap: list[tuple[int, int, int, str]] = []  # (-key, -position, size, text): the largest key on top
    total = 0
    for position, text in enumerate(texts):
        data = text.encode("utf-8")
        key = _key(data, seed)
        if heap and total >= sample_bytes and key > -heap[0][0]:
            continue  # full, and this document would be the first one dropped anyway
        heapq.heappush(heap, (-key, -position, len(data), text))
        total += len(data)
        while total - heap[0][2] >= sample_bytes:  # still full without the largest key: drop it
            total -= heapq.heappop(heap)[2]
    return [text for *_, text in sorted(heap, key=lambda item: -item[1])]


def sample_corpus(
    paths: Iterable[str | Path],
    sample_bytes: int,
    clean_cfg: CleanConfig | None,
    seed: int,
    stats: CleanStats | None = None,
    text_field: str = "text",
    csv_column: str = "text",
    skip_bad_files: bool = False,
) -> list[str]:
    """`sample_texts` of the cleaned documents under `paths`, cleaning only a random fraction of them.

    Cleaning costs far more than reading, so a big corpus is thinned first: each raw document is
    kept when a seeded hash of it, independent of the one `sample_texts` uses, falls below the
    fraction that makes the kept documents total OVERSAMPLE x sample_bytes on average, the corpus
    size being estimated from its file sizes (all of them in a corpus smaller than that). Whether a
    document is kept depends on nothing but its text, so the sample stays uniform over documents and
    deterministic given the seed. With `stats`, only the kept documents are counted.

    Each file is sampled on its own first, and the sample is drawn from those: every document of the
    sample is also in its file's (fewer documents rank before it there), so the result is the same,
    and a bad file skipped under `skip_bad_files` is left out whole, not after its first records
    were taken. The cost is memory for one file's sample beside the whole one.
    """
    # Imported here so this module works without the readers and their dependencies.
    from pipeline.readers import ReadStats
    from pipeline.sources import BadFileError, expand_paths, iter_texts

    files = expand_paths(paths)
    estimate = sum(f.stat().st_size for f in files)
    keep_below = 2**64 if estimate <= OVERSAMPLE * sample_bytes else int(2**64 * OVERSAMPLE * sample_bytes / estimate)
    cfg = clean_cfg or CleanConfig()

    quiet = ReadStats(quiet=True)

    def file_sample(path: Path, file_stats: CleanStats | None) -> list[str]:
        def cleaned_kept() -> Iterator[str]:
            # Quiet, then one line: prepare reads (and reports) the same bad records again as it encodes.
            for text, _where in iter_texts([path], text_field=text_field, csv_column=csv_column, stats=quiet):
                if _key(text.encode("utf-8", "surrogatepass"), seed, b"pre-sample") < keep_below:
                    cleaned, _rule = clean_text(text, cfg, file_stats)
                    if cleaned is not None:
                        yield cleaned

        return sample_texts(cleaned_kept(), sample_bytes, seed)

    def good_files_samples() -> Iterator[str]:
        for path in files:
            file_stats = None if stats is None else CleanStats()
            try:
                yield from file_sample(path, file_stats)
            except BadFileError as err:
                if not skip_bad_files:  # as prepare's own stop at a bad file says: the option is the way on
                    raise BadFileError(err.path, err.offset, f"{err.message}\n(--skip-bad-files leaves such files "
                                       "out and goes on)") from None
                log.warning("%s (left out of the tokenizer sample: --skip-bad-files)", err)
                continue
            if stats is not None:
                stats.merge(file_stats)

    sample = sample_texts(good_files_samples(), sample_bytes, seed)
    if quiet.bad_records:
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in sorted(quiet.bad_records.items()))
        first = next(e for e in quiet.examples if not e.endswith(": invalid_utf8"))  # repaired, not skipped
        log.warning("tokenizer sample: bad records skipped: %s (the first: %s)", kinds, first)
    return sample


def train_from_paths(
    paths: Iterable[str | Path],
    vocab_size: int,
    sample_bytes: int,
    clean_cfg: CleanConfig | None,
    seed: int,
    out_path: str | Path,
    stats: CleanStats | None = None,
    text_field: str = "text",
    csv_column: str = "text",
    skip_bad_files: bool = False,
) -> Path:
    """Train on `sample_corpus` of the documents under `paths` and save to out_path."""
    sample = sample_corpus(paths, sample_bytes, clean_cfg, seed, stats, text_field, csv_column, skip_bad_files)
    if not sample:
        raise TokenizerError("no documents survived cleaning, so there is nothing to train a tokenizer on: "
                           "check --text-field / --csv-column, or clean less (--clean-preset minimal)")
    tok = train_tokenizer(sample, vocab_size)
    if tok.get_vocab_size() < vocab_size:
        # BPE stops when no pair occurs twice: a store built with this tokenizer would have a smaller
        # vocabulary than asked for, and `prepare --vocab-size` would then refuse it on every run.
        raise TokenizerError(f"the corpus sample supports only {tok.get_vocab_size():,} tokens, not --vocab-size "
                           f"{vocab_size:,}: give more text (or a larger --tokenizer-sample-bytes), or ask for at "
                           f"most {tok.get_vocab_size():,}")
    return save_tokenizer(tok, out_path)
