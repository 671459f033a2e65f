"""`bin/prepare.py --merge`: join the part stores of a `--shard i/n` build into one store, in place.

Each `--shard i/n` job writes a complete store of its own in `<root>/part-i-of-n/`. The merged
manifest in `<root>/` lists the parts' shards by relative path (`part-0-of-2/train-00000.bin`), in
part order, so no training token is copied and the merge takes a moment whatever the corpus size.

Deduplication is exact within each part. A document that occurs in two parts cannot be dropped
without rewriting a shard, so the merge only counts such documents (`stats.cross_part_duplicates`,
from the hashes each part keeps in `doc_hashes.bin`); they stay in the store. With the plan's
interleaved chunk assignment, they are as rare as duplicates across files are.

Only the train split is pointed at. The val split is copied into shards of the store's own, as one
job packs it: a training window never straddles two shards, so one small val shard per part could
leave no shard with room for a window where one job's store, holding the same documents in one shard,
has it (`make train` refused the merged store's val as too small). Val is the small split
(--val-fraction of the documents), so the copy stays brief; the parts keep theirs, and --shard jobs
stay unaware of each other's sizes (a part never fails for being a small slice).

Part i holds the chunks at positions i, i+n, i+2n... of the plan over all input files, so parts
belong together only if they were cut from the same plan: a file added, removed or changed between
the jobs shifts every later position, and a merge of parts from two plans silently holds some
documents twice and others not at all. Each part records its plan's fingerprint (input paths, sizes
and mtimes, chunk size, part count, every option) and the merge refuses parts whose fingerprints differ.
Jobs on several machines must therefore read the corpus at the same paths with the same mtimes (a
shared filesystem, or copies that keep them); content hashes would lift that, at a full read of
every input per job.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from common.files import fsync_dir, sha256_file
from pipeline.assemble import HashSet, PrepareError, reset_store, store_and_parts_locked
from pipeline.config import PrepareConfig
from pipeline.store import ShardWriter, StoreError, TokenStore, read_manifest, write_manifest
from pipeline.store_layout import MANIFEST, PART, SPLITS, part_folders, rerun_shard

log = logging.getLogger("pipeline")

# Keys every part must agree on, or their shards do not belong in one store.
_SAME = ("format_version", "dtype", "vocab_size", "bos_id", "clean", "text_field", "csv_column", "split")


def _parts(root: Path) -> list[Path]:
    found = {}
    for d in part_folders(root):
        m = PART.fullmatch(d.name)
        found[int(m[1]), int(m[2])] = d
    counts = {n for _, n in found}
    if not counts:
        raise PrepareError(f"{root}: no part-i-of-n folders to merge (run with --shard i/n first)")
    if len(counts) > 1:
        raise PrepareError(f"{root}: parts of different splits ({', '.join(f'of-{n}' for n in sorted(counts))}); "
                           "remove the stale ones")
    n = counts.pop()
    missing = [i for i in range(n) if (i, n) not in found]
    if missing:
        raise PrepareError(f"{root}: parts {', '.join(f'{i}/{n}' for i in missing)} missing; run --shard for them")
    return [found[i, n] for i in range(n)]


def _stale(parts: list[Path], values: list[Any]) -> str:
    """The sentence that names the parts to rebuild, of `parts` whose `values` (one each) are not all equal.

    Which value is meant cannot be told from the parts alone; the one of the most recently built part
    is taken to be, since that job was run last. The parts of other values are named as stale.
    """
    built = [(d / MANIFEST).stat().st_mtime_ns for d in parts]
    latest = values[max(range(len(parts)), key=built.__getitem__)]
    stale = [d for d, value in zip(parts, values, strict=True) if value != latest]
    current = [d.name for d, value in zip(parts, values, strict=True) if value == latest]
    return f"Stale, built before {', '.join(current)}: {', '.join(d.name for d in stale)}; rerun {rerun_shard(stale)}"


def _check_same_options(root: Path, parts: list[Path], stores: list[TokenStore]) -> None:
    """Refuse parts built with different options, saying for each option which part has which value."""
    options = [{**{key: m.get(key) for key in (*_SAME, "work_format")}, "tokenizer": m["tokenizer"]["sha256"],
                "chunk_bytes": m["part"]["chunk_bytes"]} for m in (store.manifest for store in stores)]
    diffs = []
    for key in options[0]:
        holders: dict[str, list[str]] = {}
        for d, opts in zip(parts, options, strict=True):
            holders.setdefault(json.dumps(opts[key], sort_keys=True), []).append(d.name)
        if len(holders) > 1:  # a long value (the cleaning options, a sha256) is numbered, not shown
            shown = [value if len(value) <= 20 else f"value {i + 1}" for i, value in enumerate(holders)]
            diffs.append(f"{key} " + "; ".join(f"{value} in {', '.join(names)}"
                                               for value, names in zip(shown, holders.values(), strict=True)))
    if diffs:
        raise PrepareError(f"{root}: the parts were built with different options ({'; and '.join(diffs)}), so "
                           f"their shards do not belong in one store. {_stale(parts, options)}")


def _check_same_plan(root: Path, parts: list[Path], stores: list[TokenStore]) -> None:
    """Refuse parts cut from different plans of the inputs, naming the stale ones."""
    plans = [store.manifest["part"]["plan_fingerprint"] for store in stores]
    if len(set(plans)) > 1:
        raise PrepareError(f"{root}: the parts were cut from different plans of the inputs (input files added, "
                           f"removed or changed, or options changed, between the --shard jobs; or jobs on other "
                           f"machines read copies of the corpus at other paths or with other modification times: "
                           f"every job must see the same paths with the same mtimes), so merging them would lose "
                           f"some documents and repeat others. {_stale(parts, plans)}")


def _sum_stats(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Add counts, add per-kind tables, concatenate lists (bad files, the first few bad records)."""
    out: dict[str, Any] = {}
    for s in stats:
        for key, value in s.items():
            if isinstance(value, dict):
                out[key] = dict(Counter(out.get(key, {})) + Counter(value))
            elif isinstance(value, list):
                out[key] = out.get(key, []) + value
            else:
                out[key] = out.get(key, 0) + value
    out["bad_record_examples"] = out.get("bad_record_examples", [])[:5]
    return out


def merge_parts(root: Path) -> Path:
    """Write <root>/manifest.json over all parts; a no-op when the parts have not changed.

    Holds the lock of the store in `root` (a full build there must not have its store reset under
    it) and of every part, so that no part is rebuilt while the manifest is made to point at it."""
    parts = _parts(root)
    with store_and_parts_locked(root, parts):
        return _merge(root, parts)


def _merge(root: Path, parts: list[Path]) -> Path:
    stores = []
    for d in parts:
        # Checked here, not left to TokenStore: its advice for a part ends "then merge the parts", the very
        # --merge that is running now.
        if not (d / MANIFEST).is_file():
            raise PrepareError(f"{d}: not a finished part (no {MANIFEST}: its job was stopped, or is yet to "
                               f"run); rerun {rerun_shard([d])}")
        try:
            stores.append(TokenStore(d))
        except StoreError as err:
            raise PrepareError(f"{d}: not a finished part ({err}); rerun its --shard job") from None
    for d, store in zip(parts, stores, strict=True):
        part = store.manifest.get("part")
        if not isinstance(part, dict):  # a store built without --shard (or copied) into a part's folder
            raise PrepareError(f"{d}: holds a store built without --shard, not a part; rerun {rerun_shard([d])}")
        if f"part-{part['index']}-of-{part['count']}" != d.name:
            raise PrepareError(f"{d}: holds part {part['index']}/{part['count']}, not the one its name says; "
                               f"rerun its --shard job")
    # Parts built before parts recorded their plan: nothing says which plan they were cut from, and
    # parts of different plans look exactly like parts of one, so they are rebuilt rather than trusted.
    unknown = [d for d, store in zip(parts, stores, strict=True) if "plan_fingerprint" not in store.manifest["part"]]
    if unknown:
        raise PrepareError(f"{', '.join(map(str, unknown))}: built by an older version that did not record which "
                           f"plan of the inputs the part was cut from, so the merge cannot check that the parts "
                           f"fit together; rebuild with {rerun_shard(unknown)}")
    _check_same_options(root, parts, stores)
    _check_same_plan(root, parts, stores)
    first = stores[0].manifest
    tokenizer = root / "tokenizer.json"
    if not tokenizer.is_file() or sha256_file(tokenizer) != first["tokenizer"]["sha256"]:
        raise PrepareError(f"{tokenizer} is missing or is not the tokenizer the parts were built with")
    fp = hashlib.sha256(json.dumps([s.manifest["inputs_fingerprint"] for s in stores]).encode()).hexdigest()
    # Up to date only over the very parts merged (the sha256 of each one's manifest): a part rebuilt
    # elsewhere and copied in (rsync) keeps its inputs_fingerprint when only its content differs (a copy
    # of a file edited at the same size and mtime, another version of the code), and its shards may keep
    # their sizes. A manifest merged before part_manifests was recorded is merged again.
    merged = {d.name: store.manifest_sha256 for d, store in zip(parts, stores, strict=True)}
    try:
        done = TokenStore(root).manifest
        # A store merged before val was copied points into the parts for it too: merged again.
        own_val = all("/" not in s["file"] for s in done["splits"]["val"]["shards"])
        if done.get("part_manifests") == merged and own_val:
            log.info("%s: merge is up to date", root)
            return root
    except StoreError:
        pass

    splits = {}
    for split in SPLITS:
        shards = [{**s, "file": f"{d.name}/{s['file']}", "index": f"{d.name}/{s['index']}"}
                  for d, store in zip(parts, stores, strict=True)
                  for s in store.manifest["splits"][split]["shards"]]
        info = [store.manifest["splits"][split] for store in stores]
        splits[split] = {key: sum(i[key] for i in info) for key in ("tokens", "documents", "text_bytes")}
        splits[split]["shards"] = shards
    seen, cross = HashSet(), 0
    for d, store in zip(parts, stores, strict=True):
        hashes = np.fromfile(d / store.manifest["part"]["doc_hashes"], dtype="<u8")
        dup = seen.contains(hashes)
        cross += int(dup.sum())
        seen.add(hashes[~dup])
    stats = _sum_stats([s.manifest["stats"] for s in stores])
    # Files that failed at planning are in every part's list (each part planned all files); a full
    # build lists them once, first, then the files that failed while reading (here part by part).
    planned = [s.manifest["part"]["plan_bad_files"] for s in stores]
    stats["bad_files"] = first["stats"]["bad_files"][:planned[0]] + [
        bad for s, k in zip(stores, planned, strict=True) for bad in s.manifest["stats"]["bad_files"][k:]]
    stats["cross_part_duplicates"] = cross
    # In plan order, as one job lists them (parts built before parts recorded it: in part order).
    places: dict[str, tuple[int, int]] = {}
    for store in stores:
        listed = store.manifest["sources"]
        order = store.manifest["part"].get("source_order") or [-1] * len(listed)
        for place, src in zip(order, listed, strict=True):
            places.setdefault(src["path"], (place, src["size"]))
    sources = sorted(places.items(), key=lambda item: item[1][0])
    old = read_manifest(root)
    if old is not None and "parts" not in old:  # as a rebuild that replaces a store says
        log.warning("%s: replacing the store built there without --shard; a training run on it cannot resume "
                    "on the merged one", root)
    elif old is not None and (old["part_manifests"] == merged if "part_manifests" in old
                              else old.get("inputs_fingerprint") == fp):
        # Merged by an earlier version over these very parts: the train split stays, but a run's checkpoint
        # names the store by its manifest's sha256, and the one it names is about to go.
        log.warning("%s: merged again over the same parts (val copied into the store, part manifests recorded): "
                    "a training run on the store as merged before cannot resume on it", root)
    reset_store(root)  # before the val shards are written: it deletes the old ones
    splits["val"]["shards"] = _copy_val(root, stores)
    manifest = {k: first[k] for k in (*_SAME, "work_format")}
    manifest.update({
        "tokenizer": {"path": "tokenizer.json", "sha256": first["tokenizer"]["sha256"]},
        "splits": splits, "sources": [{"path": p, "size": s} for p, (_, s) in sources], "stats": stats,
        "parts": [d.name for d in parts], "part_manifests": merged, "inputs_fingerprint": fp,
    })
    write_manifest(root, manifest)
    log.info("%s: merged %d parts (%d documents seen in more than one part are kept: see cross_part_duplicates)",
             root, len(parts), cross)
    return root


# Tokens handed to ShardWriter at a time: bounds the copy's memory whatever the size of a part's shard.
_COPY_TOKENS = 1 << 24


def _copy_val(root: Path, stores: list[TokenStore]) -> list[dict[str, Any]]:
    """The parts' val documents, in part order, written into val shards in `root` packed as one job packs
    them (whole documents, at most the jobs' --shard-tokens each); the shards' manifest entries."""
    first = stores[0].manifest
    # Parts built before they recorded their --shard-tokens: packed as its default would.
    limit = first["part"].get("shard_tokens", PrepareConfig.shard_tokens)
    writer = ShardWriter(root, "val", np.dtype(first["dtype"]), first["vocab_size"], limit)
    for store in stores:
        listed = [shard for shard in store.manifest["splits"]["val"]["shards"] if shard["tokens"]]
        for shard, tokens, starts in zip(listed, store.shards("val"), store.doc_index("val"), strict=True):
            copied = hashlib.sha256()
            bounds = np.append(starts, len(tokens))
            doc = 0
            while doc < len(starts):
                end = max(doc + 1, int(np.searchsorted(bounds, bounds[doc] + _COPY_TOKENS, side="right")) - 1)
                ids = np.asarray(tokens[bounds[doc]:bounds[end]])
                copied.update(ids.tobytes())
                writer.add(ids, np.diff(bounds[doc:end + 1]))
                doc = end
            # The copy gets checksums of its own, which would vouch for a part's shard gone bad on disk.
            index = shard.get("index_sha256")  # as TokenStore's verify, which checks it where a manifest has it
            if copied.hexdigest() != shard["sha256"] or index and hashlib.sha256(starts).hexdigest() != index:
                raise PrepareError(f"{store.root / shard['file']}: sha256 differs from its part's manifest (corrupt "
                                   f"shard); rerun {rerun_shard([store.root])}")
    return writer.close()


def unmerge(root: Path, part: Path) -> None:
    """Remove the merged manifest in `root` if it lists `part`, which is about to be rebuilt: it would go
    on vouching for the part's old shards (and new ones of the same sizes open without verify). The
    store in `root` is then unfinished until the next --merge."""
    if part.name in (read_manifest(root) or {}).get("parts", []):
        (root / MANIFEST).unlink(missing_ok=True)
        fsync_dir(root)
        log.info("%s: unmarked the merged store while %s is rebuilt; --merge again once the parts are done",
                 root, part.name)
