import json
import random
from collections import Counter
from pathlib import Path

import pytest

from megatron_azr.azr.buffers import BufferFileError, Buffers, TaskBuffer, load_records
from megatron_azr.azr.config import AZRConfig
from megatron_azr.azr.protocols import TaskType
from megatron_azr.azr.tasks import (
    IDENTITY_PROGRAM,
    InductionTask,
    TaskRecordError,
    Triplet,
    identity_induction_task,
    identity_triplet,
)

ROOT = Path(__file__).resolve().parents[2]
SEED_IO = ROOT / "data" / "azr_seeds" / "7b_coder_seed_io.jsonl"
SEED_IND = ROOT / "data" / "azr_seeds" / "7b_coder_code_f_seed_io.jsonl"
DED = TaskType.DEDUCTION

# Chi-square critical values at p = 0.001 (df -> value), so a correct sampler fails 1 in 1000
# seeds; the seeds below are fixed, so the tests are deterministic.
CHI2_P001 = {9: 27.877, 19: 43.820}


def chi2(counts: list[int], expected: float) -> float:
    return sum((c - expected) ** 2 / expected for c in counts)


def triplets(n: int, step: int = 0) -> list[Triplet]:
    return [Triplet(f"def f(a):\n    return a + {i}", "1", str(1 + i), step=step) for i in range(n)]


# ---------------------------------------------------------------------------- sampling


def test_references_uniform_without_replacement():
    buf = TaskBuffer(DED, 100, entries=triplets(20))
    rng = random.Random(0)
    counts: Counter[str] = Counter()
    draws = 6000
    for _ in range(draws):
        refs = buf.sample(6, rng)
        assert len(refs) == 6 and len({r.snippet for r in refs}) == 6
        counts.update(r.snippet for r in refs)
    assert len(counts) == 20
    assert chi2(list(counts.values()), draws * 6 / 20) < CHI2_P001[19]


def test_references_capped_by_buffer_size():
    buf = TaskBuffer(DED, 100, entries=triplets(3))
    assert len(buf.sample(6, random.Random(0))) == 3
    assert buf.sample(0, random.Random(0)) == []
    assert TaskBuffer(DED, 100).sample(6, random.Random(0)) == []


def test_solver_batch_new_first_then_uniform_fill():
    old, new = triplets(10, step=3), triplets(4, step=5)
    for t in new:
        t.snippet += "  # new"
    buf = TaskBuffer(DED, 100, entries=old + new)
    rng = random.Random(1)
    counts: Counter[str] = Counter()
    rounds = 5000
    for _ in range(rounds):
        batch = buf.solver_batch(6, step=6, rng=rng)
        assert len(batch) == 6
        assert {t.snippet for t in batch[:4]} == {t.snippet for t in new}
        assert len({t.snippet for t in batch}) == 6  # the fill is without replacement
        counts.update(t.snippet for t in batch[4:])
    assert len(counts) == 10
    assert chi2(list(counts.values()), rounds * 2 / 10) < CHI2_P001[9]


def test_solver_batch_window():
    seeds, step1 = triplets(5, step=0), triplets(3, step=1)
    buf = TaskBuffer(DED, 100, entries=seeds)
    # At step 1 the seeds (step 0) count as the previous step's proposals.
    assert len({t.output for t in buf.solver_batch(5, 1, random.Random(0))}) == 5
    buf.add(step1)
    # At step 2 the step-1 proposals come first; the seeds are only fill.
    for seed in range(20):
        batch = buf.solver_batch(4, 2, random.Random(seed))
        assert [t.step for t in batch] == [1, 1, 1, 0]
    # Window 0 (or a later step) makes the whole batch a uniform draw.
    first_steps = {buf.solver_batch(1, 2, random.Random(s), window=0)[0].step for s in range(50)}
    assert first_steps == {0, 1}


def test_solver_batch_short_buffer_repeats_and_filters():
    buf = TaskBuffer(DED, 100, entries=triplets(3))
    batch = buf.solver_batch(8, 1, random.Random(0))
    assert len(batch) == 8 and len({t.snippet for t in batch}) == 3
    filtered = buf.solver_batch(8, 1, random.Random(0), accept=lambda t: t.output != "2")
    assert len(filtered) == 8 and all(t.output != "2" for t in filtered)
    assert buf.solver_batch(8, 1, random.Random(0), accept=lambda t: False) == []
    assert TaskBuffer(DED, 100).solver_batch(8, 1, random.Random(0)) == []


def test_sampling_is_deterministic_per_seed():
    buf = TaskBuffer(DED, 100, entries=triplets(50))

    def draw(seed: int) -> list[str]:
        rng = random.Random(seed)
        return [t.snippet for t in buf.sample(6, rng) + buf.solver_batch(10, 1, rng)]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


# ---------------------------------------------------------------------------- caps


def test_cap_drop_new_keeps_the_first_entries():
    buf = TaskBuffer(DED, 5, "drop_new", triplets(4))
    assert buf.add(triplets(3, step=1)) == 1
    assert len(buf) == 5 and [t.step for t in buf] == [0, 0, 0, 0, 1]
    assert buf.add(triplets(2, step=2)) == 0 and len(buf) == 5


def test_cap_evict_oldest_keeps_the_newest():
    buf = TaskBuffer(DED, 5, "evict_oldest", triplets(4))
    assert buf.add(triplets(3, step=1)) == 3
    assert [t.step for t in buf] == [0, 0, 1, 1, 1]
    assert buf.add(triplets(7, step=2)) == 5
    assert [t.step for t in buf] == [2] * 5
    assert [t.output for t in buf] == [str(1 + i) for i in range(2, 7)]


# ---------------------------------------------------------------------------- persistence


def test_jsonl_round_trip(tmp_path):
    ind = identity_induction_task()
    ind.step, ind.extra = 7, {"_input_types": ["str"] * 6}
    tri = Triplet("import re\ndef f(a):\n    return a", "'x'", "'x'", ["import re"], step=3)
    tri.extra = {"_input_type": "str", "composite_functions": [{"snippet": "def g(): pass"}]}
    buffers = Buffers.from_seeds([tri, identity_triplet()], [ind], max_size=10)
    buffers.deduction.add([Triplet("def f(a):\n    return 'é'", "1", "'é'", step=9)])
    buffers.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Buffers.FILES.values())
    loaded = Buffers.load(tmp_path, max_size=10)
    for task in TaskType:
        a = [r.to_json() for r in getattr(buffers, task.value)]
        b = [r.to_json() for r in getattr(loaded, task.value)]
        assert a == b and a
    assert loaded.deduction.entries[0].extra["composite_functions"] == [
        {"snippet": "def g(): pass"}
    ]
    # Saving again overwrites atomically and leaves no temporary files behind.
    loaded.save(tmp_path)
    assert len(list(tmp_path.iterdir())) == 3


def test_bad_files_name_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(identity_triplet().to_json()) + "\n\n{not json}\n")
    with pytest.raises(BufferFileError, match=r"d\.jsonl:3"):
        load_records(p, DED)
    p.write_text(json.dumps({"snippet": "x", "input": 1, "output": "1"}) + "\n")
    with pytest.raises(BufferFileError, match=r"d\.jsonl:1.*'input'"):
        load_records(p, DED)
    with pytest.raises(BufferFileError, match="not found"):
        load_records(tmp_path / "missing.jsonl", DED)


def test_induction_record_checks():
    with pytest.raises(TaskRecordError, match="3 inputs but 2 outputs"):
        InductionTask("def f(a):\n    return a", ["1", "2", "3"], ["1", "2"], "m")
    with pytest.raises(TaskRecordError, match=">= 2"):
        InductionTask("def f(a):\n    return a", ["1"], ["1"], "m")
    task = InductionTask(IDENTITY_PROGRAM, list("abcde"), list("ABCDE"), "m")
    assert task.given_pairs == [("a", "A"), ("b", "B")]
    assert task.hidden_inputs == list("cde") and task.hidden_outputs == list("CDE")


# ---------------------------------------------------------------------------- official seeds


def test_official_seed_files_load_completely():
    io = load_records(SEED_IO, DED)
    ind = load_records(SEED_IND, TaskType.INDUCTION)
    assert len(io) == 256 and len(ind) == 256
    assert all(isinstance(t, Triplet) for t in io) and all(
        isinstance(t, InductionTask) for t in ind
    )
    assert io[0].snippet == IDENTITY_PROGRAM and io[0].step == 0
    sizes = Counter(len(t.inputs) for t in ind if isinstance(t, InductionTask))
    assert sizes == {10: 255, 6: 1}
    six = next(t for t in ind if isinstance(t, InductionTask) and len(t.inputs) == 6)
    assert len(six.given_pairs) == 3 and len(six.hidden_inputs) == 3
    assert sum(bool(t.imports) for t in io) == 19
    # Unknown official keys survive a round trip.
    assert io[1].to_json()["_input_type"] == "str"


def test_seed_buffers_from_config(tmp_path):
    cfg = AZRConfig(
        seed_io_path=str(SEED_IO.relative_to(ROOT)),
        seed_induction_path=str(SEED_IND.relative_to(ROOT)),
    )
    buffers = Buffers.from_config(cfg, base_dir=ROOT)
    assert buffers.sizes() == {t: 256 for t in TaskType}
    # Abduction and deduction start equal but are separate records.
    assert [t.to_json() for t in buffers.abduction] == [t.to_json() for t in buffers.deduction]
    buffers.abduction.entries[0].snippet = "changed"
    assert buffers.deduction.entries[0].snippet == IDENTITY_PROGRAM
    assert len(buffers.programs()) == 512
    small = Buffers.from_config(
        AZRConfig(batch_size=4, seed_batch_factor=4, seed_io_path=cfg.seed_io_path), ROOT
    )
    assert small.sizes() == {TaskType.ABDUCTION: 16, TaskType.DEDUCTION: 16, TaskType.INDUCTION: 1}
    assert small.induction.entries[0].snippet == IDENTITY_PROGRAM


def test_identity_seed_is_consistent():
    tri, ind = identity_triplet(), identity_induction_task()
    ns: dict = {}
    exec(tri.snippet, ns)
    assert repr(eval(f"f({tri.input})", ns)) == tri.output
    assert [repr(eval(f"f({i})", ns)) for i in ind.inputs] == ind.outputs
