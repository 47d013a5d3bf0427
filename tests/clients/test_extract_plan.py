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


def _as_tuples(parts) -> list[tuple]:
    return [
        (p.index, [(i.id, i.text, i.path) for i in p.items], [(b.id, b.source) for b in p.bad_rows], p.first, p.last)
        for p in parts
    ]


def _sources(root: Path) -> list[Path]:
    """One source of each kind with the awkward rows: bad JSON, blank lines, no final newline, quoted
    newlines in CSV, non-ASCII text, several Parquet row groups, hidden and nested folders."""
    jsonl = root / "m.jsonl"
    lines = []
    for i in range(53):
        lines.append("{bad" if i % 9 == 3 else "" if i % 11 == 5 else json.dumps({"id": f"t{i}", "text": f"é {i}"}))
    jsonl.write_text("\n".join(lines) + "\n" + '{"id": "last", "text": "no newline"}')
    ids = [f"p{i}" for i in range(30)]
    pq.write_table(pa.table({"id": ids, "text": ids}), root / "m.parquet", row_group_size=7)
    rows = [f'{i},"t{i}\nmore"' if i % 4 == 0 else "" if i % 7 == 0 else f"{i},t{i}" for i in range(30)]
    (root / "m.csv").write_text("id,text\n" + "\n".join(rows) + "\n")
    tree = root / "d"
    for folder in ("b", "a", "a/z", ".hidden", "a-b", "c/d/e"):
        (tree / folder).mkdir(parents=True, exist_ok=True)
    for name in ("b/2.txt", "b/1.txt", "a/z/9.txt", "a/3.txt", "top.txt", ".hidden/x.txt", "a/skip.bin", "a-b/1.txt"):
        (tree / name).write_text(name)
    for name in ("a.txt", "c/d/e/f.txt", "c/d/g.txt", "c/a.txt"):
        (tree / name).write_text(name)
    return [jsonl, root / "m.parquet", root / "m.csv", tree]


@pytest.mark.parametrize("size", [1, 3, 8, 100])
def test_spans_address_the_same_partitions_workers_read_back(tmp_path, size):
    """What the Ray engine's workers read from the spans is what the local engine's single pass builds."""
    for source in _sources(tmp_path):
        plan = Plan(open_source(str(source)), size=size)
        every = _as_tuples(plan.partitions())
        spans = list(plan.spans())
        assert [s.index for s in spans] == [p[0] for p in every] and all(s.rows for s in spans)
        assert _as_tuples(plan.read(s) for s in spans) == every, source.name
        assert _as_tuples(p for run in plan.runs(spans) for p in plan.read_run(run)) == every, source.name
        assert [s.index for s in plan.spans(skip=lambda k: k % 2 == 0)] == [p[0] for p in every if p[0] % 2]
    firsts = [Plan(open_source(str(source)), size=size).partitions().__next__().first for source in _sources(tmp_path)]
    assert firsts == ["m.jsonl:1", "m.parquet:1", "m.csv:2", "a/3.txt"]  # lines / rows as an editor numbers them
    parquet = Plan(open_source(str(tmp_path / "m.parquet")), size=2)
    assert [len(r) for r in parquet.runs(list(parquet.spans()))] == [4, 4, 4, 3]  # a row group of 7 = 4 spans


def test_a_resume_parses_only_the_pending_partitions(tmp_path, monkeypatch):
    from d2v.extract import rows

    parsed = []
    monkeypatch.setattr(rows, "_json_row", lambda raw, parse=rows._json_row: parsed.append(raw) or parse(raw))
    manifest = _texts(tmp_path / "m.jsonl", 95, bad_every=7)
    plan = Plan(open_source(str(manifest)), size=10)
    every = _as_tuples(plan.partitions())
    assert len(parsed) == 95
    parsed.clear()
    done = {0, 1, 2, 3, 4, 7}
    assert _as_tuples(plan.pending(skip=done.__contains__)) == [p for p in every if p[0] not in done]
    assert len(parsed) == 10 + 10 + 10 + 5  # partitions 5, 6, 8, 9: no line of a committed one was parsed
    parquet = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(50)], "text": ["x"] * 50}), parquet, row_group_size=20)
    plan = Plan(open_source(str(parquet)), size=6)
    assert _as_tuples(plan.pending(skip={1, 2, 3}.__contains__)) == [
        p for p in _as_tuples(plan.partitions()) if p[0] not in {1, 2, 3}
    ]


def test_a_span_whose_rows_changed_is_refused(tmp_path):
    manifest = _texts(tmp_path / "m.jsonl", 20)
    plan = Plan(open_source(str(manifest)), size=8)
    spans = list(plan.spans())
    _texts(manifest, 12)  # rewritten shorter after planning
    with pytest.raises(ConfigError, match="changed while being read"):
        plan.read(spans[1])


def test_stdin_has_no_spans():
    with pytest.raises(ConfigError, match="stdin"):
        list(Plan(open_source("-"), size=4, stdin=iter(["a\n"])).spans())


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


def test_a_partition_written_in_pieces_commits_once_all_pieces_are_there(tmp_path):
    """Ray may split a partition's rows across blocks: each piece is written apart, committed together."""
    from d2v.extract.ray_job import _Pieces
    from d2v.extract.ray_stages import write_pieces

    out = tmp_path / "out"
    store = ShardStore(out)
    (span,) = Plan(open_source(str(_texts(tmp_path / "m.jsonl", 5, bad_every=5))), size=5).spans()

    def block(ids, error=None, bad=False):
        n = len(ids)
        return pa.table(
            {
                "partition": [0] * n, "partition_rows": [5] * n, "bad_row": [bad] * n, "id": ids,
                "modality": ["" if bad else "text"] * n, "model": ["m"] * n, "dims": pa.array([2] * n, pa.int32()),
                "label": pa.array([None] * n, pa.string()),
                "source": pa.array(["m.jsonl:5" if bad else None] * n, pa.string()),
                "error": pa.array([error] * n, pa.string()),
                "embedding": pa.array([None if error else [1.0, 0.0]] * n, pa.list_(pa.float32())),
                "tokens": pa.array([None] * n, pa.list_(pa.list_(pa.float32()))), "rss_mb": [1.0] * n,
            }
        )  # fmt: skip

    pieces = _Pieces([span])
    first = json.loads(write_pieces(block(["t00001", "t00000"]), str(out)).column("entry")[0].as_py())
    assert first["count"] == 2 and first["shards"][0].startswith("embeddings/m/part-000000-")
    assert pieces.add(first) is None  # 2 of 5 rows: nothing to commit yet
    second = json.loads(write_pieces(block(["t00002"], error="too long"), str(out)).column("entry")[0].as_py())
    assert pieces.add(second) is None
    ShardStore(out)  # a restart now: the uncommitted pieces are removed
    assert not list(out.rglob("part-*"))
    first = json.loads(write_pieces(block(["t00001", "t00000"]), str(out)).column("entry")[0].as_py())
    second = json.loads(write_pieces(block(["t00002"], error="too long"), str(out)).column("entry")[0].as_py())
    rest = pa.concat_tables([block(["t00003"]), block(["m.jsonl:5"], error="invalid JSON", bad=True)])
    third = json.loads(write_pieces(rest, str(out)).column("entry")[0].as_py())
    pieces = _Pieces([span])  # the restarted run's
    assert pieces.add(first) is None and pieces.add(second) is None and pieces.add(second) is None  # counted once
    entry = pieces.add(third)
    assert entry["rows"] == {"m": 3} and (entry["errors"], entry["bad_rows"]) == (1, 1) and len(entry["shards"]) == 2
    store.record(entry)
    resumed = ShardStore(out)
    assert resumed.state.has(0) and (resumed.state.ok, resumed.state.items) == (3, 5)
    got = sorted(x for loc in resumed.shard_files() for x in pq.read_table(loc.path).column("id").to_pylist())
    assert got == ["t00000", "t00001", "t00003"]
    errors = [json.loads(x)["id"] for x in Path(resumed.merged_errors().path).read_text().splitlines()]
    assert sorted(errors) == ["m.jsonl:5", "t00002"]
