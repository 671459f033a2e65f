import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from model import GPT, GPTConfig
from pipeline.store import write_store
from train.text_dataset import TextDataset

BOS = 5


def make(tmp_path, lengths=(3, 9, 1, 6), max_len=5, vocab=300, shard_tokens=1 << 28):
    rng = np.random.default_rng(0)
    docs = [rng.integers(6, vocab, size=n) for n in lengths]
    store = write_store(tmp_path, {"train": docs, "val": docs[:1]}, vocab_size=vocab, bos_id=BOS,
                        shard_tokens=shard_tokens)
    return docs, TextDataset(store, "train", max_len=max_len, pad_id=0)


def test_items_are_documents_truncated_to_max_len(tmp_path):
    docs, ds = make(tmp_path)
    assert len(ds) == 4
    for doc, i in zip(docs, range(len(ds)), strict=True):
        item = ds[i]
        want = np.concatenate(([BOS], doc))[:5]
        assert item["input_ids"].dtype == torch.int64 and item["input_ids"].tolist() == want.tolist()
        assert item["attention_mask"].dtype == torch.bool and item["attention_mask"].all()
        assert len(item["attention_mask"]) == len(want)


def test_documents_across_shards_are_whole_up_to_the_last_token(tmp_path):
    """Each shard's last document ends at the shard's end, and a document is read from its own shard."""
    docs, ds = make(tmp_path, lengths=(3, 9, 1, 6, 4), max_len=64, shard_tokens=12)
    assert len(ds.store.shards("train")) > 2
    assert [ds[i]["input_ids"].tolist() for i in range(len(ds))] == [[BOS, *d.tolist()] for d in docs]


def test_max_len_below_1_is_refused(tmp_path):
    store = write_store(tmp_path, {"train": [np.arange(6, 9)]}, vocab_size=300)
    with pytest.raises(ValueError, match="max_len must be >= 1, got 0"):
        TextDataset(store, "train", max_len=0)


def test_collate_pads_right_and_shifts_labels(tmp_path):
    _, ds = make(tmp_path)
    batch = ds.collate([ds[0], ds[2]])  # [BOS] + 3 ids, and [BOS] + 1 id
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape == (2, 4)
    assert ids[1, 2:].tolist() == [0, 0] and mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert labels[0].tolist() == ids[0, 1:].tolist() + [0]
    assert labels[1].tolist() == [ids[1, 1].item(), 0, 0, 0]


def test_loss_with_ignore_index_skips_padding(tmp_path):
    _, ds = make(tmp_path)
    batch = ds.collate([ds[0], ds[1]])
    logits = torch.randn(*batch["labels"].shape, 300)
    loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=0)
    keep = batch["labels"] != 0
    assert torch.allclose(loss, F.cross_entropy(logits[keep], batch["labels"][keep]))
    assert keep.sum() == (4 - 1) + (5 - 1)  # each row predicts all but its last real token


def test_batches_feed_the_model(tmp_path):
    _, ds = make(tmp_path)
    batch = ds.collate([ds[0], ds[2]])
    model = GPT(GPTConfig(vocab_size=300, block_size=8, n_layer=1, n_head=2, d_model=16))
    logits, loss = model(batch["input_ids"], batch["labels"], batch["attention_mask"])
    assert logits.shape == (2, 4, 300) and torch.isfinite(loss)


def test_works_with_dataloader_and_pickles_without_token_data(tmp_path):
    _, ds = make(tmp_path)
    batches = list(DataLoader(ds, batch_size=3, collate_fn=ds.collate))
    assert [b["input_ids"].shape[0] for b in batches] == [3, 1]
    blob = pickle.dumps(ds)
    assert len(blob) < 2000  # the memmaps are reopened, not copied
    assert pickle.loads(blob)[1]["input_ids"].tolist() == ds[1]["input_ids"].tolist()
