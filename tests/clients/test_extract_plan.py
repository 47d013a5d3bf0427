"""The partition plan and the ledger: deterministic lazy partitions, resume from the ledger alone, and the
files a killed run can leave (torn ledger line, shards without their ledger line) handled on restart."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from d2v.core.errors import ConfigError
from d2v.extract.inputs import open_source
from d2v.extract.plan import Plan
from d2v.extract.shards import ShardStore, write_partition


def _texts(path: Path, n: int, bad_every: int = 0) -> Path:
    with path.open("w") as f:
        for i in range(n):
            if bad_every and i % bad_every == bad_every - 1:
                f.write("{not json\n")
            else:
                f.write(json.dumps({"id": f"t{i:05d}", "text": f"text {i}"}) + "\n")
    return path


def test_directory_partitions_follow_a_sorted_walk(tmp_path):
    root = tmp_path / "d"
    for folder in ("b", "a", "a/z", ".hidden"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name in ("b/2.txt", "b/1.txt", "a/z/9.txt", "a/3.txt", "top.txt", ".hidden/x.txt", "a/skip.bin"):
        (root / name).write_text(name)
    plan = Plan(open_source(str(root)), size=2)
    parts = list(plan.partitions())
    assert [[it.id for it in p.items] for p in parts] == [["a/3.txt", "a/z/9.txt"], ["b/1.txt", "b/2.txt"], ["top.txt"]]
    assert [p.index for p in parts] == [0, 1, 2] and parts[0].items[0].label == "a" and parts[2].items[0].label is None
    assert plan.total_rows() == 5
    again = [[it.id for it in p.items] for p in Plan(open_source(str(root)), size=2).partitions()]
    assert again == [[it.id for it in p.items] for p in parts]  # deterministic


def test_skipped_partitions_build_no_items_and_bad_rows_stay_in_their_partition(tmp_path):
    manifest = _texts(tmp_path / "m.jsonl", 25, bad_every=7)
    plan = Plan(open_source(str(manifest)), size=10)
    every = list(plan.partitions())
    assert [p.size for p in every] == [10, 10, 5] and plan.total_rows() == 25
    assert [[b.source for b in p.bad_rows] for p in every] == [["m.jsonl:7"], ["m.jsonl:14"], ["m.jsonl:21"]]
    kept = list(plan.partitions(skip=lambda k: k != 1))
    assert [p.index for p in kept] == [1] and kept[0].first == "m.jsonl:11" and kept[0].last == "m.jsonl:20"
    assert [it.id for it in kept[0].items] == [it.id for it in every[1].items]


def test_duplicate_ids_within_a_partition_are_bad_rows(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n{"id": "b", "text": "z"}\n')
    (part,) = Plan(open_source(str(manifest)), size=10).partitions()
    assert [it.text for it in part.items] == ["x", "z"]
    assert [(b.id, b.source) for b in part.bad_rows] == [("a", "m.jsonl:2")]


def test_parquet_and_csv_manifests_stream_in_row_order(tmp_path):
    ids = [f"p{i}" for i in range(30)]
    pq.write_table(pa.table({"id": ids, "text": ids}), tmp_path / "m.parquet", row_group_size=7)
    plan = Plan(open_source(str(tmp_path / "m.parquet")), size=8)
    assert [it.id for p in plan.partitions() for it in p.items] == ids and plan.total_rows() == 30
    (tmp_path / "m.csv").write_text("id,text\n" + "".join(f"{i},t{i}\n" for i in ids))
    plan = Plan(open_source(str(tmp_path / "m.csv")), size=8)
    assert [len(p.items) for p in plan.partitions()] == [8, 8, 8, 6] and plan.total_rows() == 30


def test_partitions_are_produced_while_the_input_is_still_being_read():
    """Stdin that fails after 25 lines: the first two partitions arrive before the failure is reached."""

    def lines():
        for i in range(25):
            yield f"line {i}\n"
        raise RuntimeError("the rest of the stream was never needed")

    plan = Plan(open_source("-"), size=10, stdin=lines())
    parts = plan.partitions()
    assert [it.id for it in next(parts).items][:2] == ["1", "2"]
    assert next(parts).index == 1
    with pytest.raises(RuntimeError, match="never needed"):
        next(parts)


def _commit(store: ShardStore, index: int, ids: list[str]) -> None:
    table = pa.table({"id": ids, "embedding": pa.array([[0.0]] * len(ids), pa.list_(pa.float32(), 1))})
    entry = write_partition(store.uri, index, {"m": table}, [])
    store.record({**entry, "items": len(ids), "first": ids[0], "last": ids[-1]})


def test_resume_reads_the_ledger_only_and_removes_what_it_does_not_name(tmp_path):
    out = tmp_path / "out"
    store = ShardStore(out)
    _commit(store, 0, ["a", "b"])
    _commit(store, 3, ["c"])
    # a kill after partition 5's shard was renamed into place but before its ledger line; and a torn line
    write_partition(str(out), 5, {"m": pa.table({"id": ["z"]})}, [{"id": "e", "reason": "r"}])
    with (out / "ledger.jsonl").open("a") as f:
        f.write('{"partition": 7, "rows": {"m"')
    (out / "embeddings" / "m" / "part-000009.parquet.tmp").write_bytes(b"half")

    resumed = ShardStore(out)
    assert [k for k in range(10) if resumed.state.has(k)] == [0, 3]
    assert (resumed.state.ok, resumed.state.partitions, resumed.state.items) == (3, 2, 3)
    names = sorted(p.name for p in out.rglob("part-*"))
    assert names == ["part-000000.parquet", "part-000003.parquet"]  # orphans and temporary files gone
    assert (out / "ledger.jsonl").read_bytes().endswith(b"\n")  # the torn line was cut off
    _commit(resumed, 5, ["z"])  # the next append starts on a clean line
    assert [e["partition"] for e in ShardStore(out).ledger_entries()] == [0, 3, 5]
    assert [loc.path.rsplit("/", 1)[1] for loc in resumed.shard_files()] == [
        "part-000000.parquet",
        "part-000003.parquet",
        "part-000005.parquet",
    ]


def test_an_output_of_the_older_layout_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "ledger.jsonl").write_text('{"seq": 0, "model": "m", "rows": 4, "errors": 0, "time": 1}\n')
    with pytest.raises(ConfigError, match="older d2v extract"):
        ShardStore(out)
