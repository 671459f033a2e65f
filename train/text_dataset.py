"""One document per row, right-padded: the seed's per-document batches, for users who want them.

Windows (train/sampler.py) waste no compute on padding and are the trainer's default; this dataset
keeps document boundaries instead. The loss skips padding because `collate` sets those labels to
`pad_id`, which the model's cross-entropy ignores. attention_mask is bool, True at real tokens, as
GPT.forward takes it.

    ds = TextDataset(store, "train", max_len=256, pad_id=0)
    loader = DataLoader(ds, batch_size=16, shuffle=True, collate_fn=ds.collate)
    for batch in loader:
        logits, loss = model(batch["input_ids"], batch["labels"], batch["attention_mask"])
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.store import TokenStore


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


class TextDataset(Dataset):
    def __init__(self, store: TokenStore, split: str, max_len: int, pad_id: int = 0):
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        # The store, not its memmaps: it pickles as its path, so DataLoader workers reopen the files
        # (refusing a store rebuilt meanwhile) rather than receive copies of them.
        self.store, self.split, self.max_len, self.pad_id = store, split, max_len, pad_id
        starts = store.doc_index(split)
        ends = [np.append(s[1:], len(t)) for s, t in zip(starts, store.shards(split), strict=True)]
        self.shard_of = _cat([np.full(len(s), i) for i, s in enumerate(starts)])
        self.starts, self.ends = _cat(starts), _cat(ends)

    @property
    def tokens(self) -> list[np.memmap]:
        return self.store.shards(self.split)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        a = int(self.starts[i])
        b = min(int(self.ends[i]), a + self.max_len)
        ids = torch.from_numpy(self.tokens[int(self.shard_of[i])][a:b].astype(np.int64))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool)}

    def collate(self, batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Right-pad to the longest row; labels[t] = input_ids[t + 1], and pad_id where there is none."""
        width = max(len(item["input_ids"]) for item in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.int64)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.bool)
        labels = torch.full((len(batch), width), self.pad_id, dtype=torch.int64)
        for row, item in enumerate(batch):
            ids = item["input_ids"]
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = True
            labels[row, : len(ids) - 1] = ids[1:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
