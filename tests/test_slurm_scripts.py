"""slurm/: the preflight, the recipes the sbatch scripts launch, the ablation list. Fast, no Slurm
needed (tests/integration/test_slurm.py submits the scripts to a real one)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_azr.config import load_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "slurm"))
import preflight  # noqa: E402

GPU_SCRIPTS = {"azr_14b.sh": "configs/azr_14b.yaml", "azr_7b.sh": "configs/azr_7b.yaml"}
GPU_MEMORY = 80e9
TABLE2 = "configs/ablations/table2.txt"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(ROOT)  # config paths (seeds) are relative to the checkout, as in a job


def sbatch_options(script: str, component: int = 0) -> dict[str, str]:
    """The #SBATCH options of one component of a (heterogeneous) job script."""
    text = (ROOT / "slurm" / script).read_text().split("#SBATCH hetjob")[component]
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", text, re.M))


def launched_config(script: str) -> str:
    return re.search(r"^azr_launch \"?\$?\{?(?:AZR_CONFIG:-)?([\w/.]+)", (
        ROOT / "slurm" / script).read_text(), re.M).group(1)  # fmt: skip


def run_preflight(capsys, world: int, config: str, *overrides: str) -> tuple[int, str, str]:
    rc = preflight.main(["--world", str(world), "--skip-sandbox", config, *overrides])
    out, err = capsys.readouterr()
    return rc, out, err


def test_preflight_records_the_resolved_config(tmp_path, capsys):
    out_dir = tmp_path / "run"
    rc, out, err = run_preflight(
        capsys, 2, "configs/tiny_cpu.yaml", "parallel.tp=2", f"run.output_dir={out_dir}"
    )
    assert rc == 0, err
    assert "2 tasks = tp 2 x pp 1 x dp 1" in out and "fresh start" in out
    recorded = load_config(out_dir / "config.yaml")
    assert recorded == load_config(
        "configs/tiny_cpu.yaml", ["parallel.tp=2", f"run.output_dir={out_dir}"]
    )
    # A later job on the same directory: resumes, and says what it changed.
    (out_dir / "checkpoints" / "step_00000004").mkdir(parents=True)
    (out_dir / "checkpoints" / "step_00000004" / "trainer_state.json").write_text('{"step": 4}')
    (out_dir / "checkpoints" / "latest").write_text("step_00000004")
    rc, out, err = run_preflight(
        capsys, 4, "configs/tiny_cpu.yaml", "parallel.tp=2", "run.steps=9",
        f"run.output_dir={out_dir}",
    )  # fmt: skip
    assert rc == 0 and "dp 2" in out and "resuming from step_00000004" in out
    assert "run.steps: 4 -> 9" in err
    assert load_config(out_dir / "config.yaml").run.steps == 9


@pytest.mark.parametrize(
    ("world", "overrides", "message"),
    [
        (3, ["parallel.tp=2"], "3 tasks do not divide into tp*pp = 2*1"),
        (2, ["model.path=/nonexistent/Qwen"], "model.path /nonexistent/Qwen does not exist"),
        (2, ["azr.seed_io_path=nodir/x.jsonl"], f"{ROOT}/nodir/x.jsonl: its directory does not"),
        (2, ["azr.k_refs=3"], "unknown key 'azr.k_refs'"),
        (2, ["parallel.tp=two"], "expected int"),
    ],
)
def test_preflight_refuses_runs_that_cannot_start(tmp_path, capsys, world, overrides, message):
    rc, _, err = run_preflight(
        capsys, world, "configs/tiny_cpu.yaml", *overrides, f"run.output_dir={tmp_path}/r"
    )
    assert rc == 2 and message in err and err.startswith("azr preflight: error:")
    assert not (tmp_path / "r").exists()


def test_preflight_refuses_a_resume_that_changes_the_model(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert run_preflight(capsys, 2, "configs/tiny_cpu.yaml", f"run.output_dir={out_dir}")[0] == 0
    (out_dir / "checkpoints" / "step_00000002").mkdir(parents=True)
    (out_dir / "checkpoints" / "step_00000002" / "trainer_state.json").write_text('{"step": 2}')
    (out_dir / "checkpoints" / "latest").write_text("step_00000002")
    rc, _, err = run_preflight(
        capsys, 2, "configs/tiny_cpu.yaml", "model.card=tiny-llama", f"run.output_dir={out_dir}"
    )
    assert rc == 2 and "cannot change (model.card: 'tiny' -> 'tiny-llama')" in err
    # The record still says what the checkpoint holds, so `azr train` refuses it too.
    assert load_config(out_dir / "config.yaml").model.card == "tiny"


def test_preflight_lets_azr_train_seed_an_absent_seed_file(tmp_path, capsys):
    rc, out, err = run_preflight(
        capsys, 1, "configs/tiny_cpu.yaml", f"azr.seed_induction_path={tmp_path}/new.jsonl",
        f"run.output_dir={tmp_path}/r",
    )  # fmt: skip
    assert rc == 0 and "fresh start" in out
    assert f"azr.seed_induction_path {tmp_path}/new.jsonl does not exist: azr train seeds" in err


def test_preflight_checks_the_colocated_rollout(tmp_path, capsys, monkeypatch):
    args = ("configs/azr_14b.yaml", f"model.path={tmp_path}", f"run.output_dir={tmp_path}/r")
    rc, _, err = run_preflight(capsys, 4, *args, "rollout.tensor_parallel_size=8")
    assert rc == 2 and "rollout.tensor_parallel_size=8 does not divide the 4 tasks" in err
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    rc, _, err = run_preflight(capsys, 8, *args)
    assert rc == 2 and "refuses expandable segments" in err
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")
    assert run_preflight(capsys, 8, *args)[0] == 0


@pytest.mark.parametrize("script", sorted(GPU_SCRIPTS))
def test_gpu_recipe_fits_its_allocation(tmp_path, script):
    opts = sbatch_options(script)
    assert launched_config(script) == GPU_SCRIPTS[script]
    cfg = load_config(GPU_SCRIPTS[script], [f"model.path={tmp_path}"])
    gpus = int(opts["gpus-per-node"])
    assert int(opts["ntasks-per-node"]) == gpus  # one task per GPU
    preflight.check(cfg, gpus * int(opts["nodes"]))

    # The paper's recipe (spec §9), bf16, colocated vLLM.
    a = cfg.azr
    assert (a.batch_size, a.k_references, a.n_learnability_samples) == (64, 6, 8)
    assert (a.max_prompt_tokens, a.max_response_tokens, a.temperature) == (6144, 8096, 1.0)
    assert (cfg.actor.lr, cfg.actor.entropy_coeff, cfg.actor.kl_coef) == (1e-6, 0.001, 0.0)
    assert (cfg.actor.precision, cfg.actor.fp8) == ("bf16", "none")
    assert (cfg.run.steps, cfg.run.checkpoint_every) == (500, 10)
    assert cfg.rollout.engine == "vllm"
    assert cfg.rollout.max_model_len == a.max_prompt_tokens + a.max_response_tokens
    assert cfg.actor.micro_batch_tokens >= cfg.rollout.max_model_len

    # Heads and KV groups split evenly; actor state + vLLM's share fit one GPU (the
    # arithmetic in the config's header).
    arch, par = cfg.model.arch, cfg.parallel
    for tp in (par.tp, cfg.rollout.tensor_parallel_size):
        assert arch.num_attention_heads % tp == 0 and arch.num_query_groups % tp == 0
    # vLLM's TP equals the actor's: every push takes the shard path (no TP gather of the model).
    assert cfg.rollout.tensor_parallel_size == par.tp and cfg.rollout.replicated
    dp = gpus // (par.tp * par.pp)
    per_param = 2 + 4 + 12 / (dp if par.distributed_optimizer else 1)
    actor = arch.num_parameters() / (par.tp * par.pp) * per_param
    vllm = cfg.rollout.gpu_memory_utilization * GPU_MEMORY
    assert actor + vllm < 0.95 * GPU_MEMORY, (actor / 1e9, vllm / 1e9)


def ablation_entries() -> list[list[str]]:
    lines = (ROOT / TABLE2).read_text().splitlines()
    return [ln.split() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def test_table2_ablations_load_and_match_the_array_range():
    entries = ablation_entries()
    names = [e[0] for e in entries]
    assert names == ["full", "deduction-only", "no-induction", "no-references", "solver-only"]
    assert sbatch_options("azr_ablation.sh")["array"] == f"0-{len(entries) - 1}"
    assert launched_config("azr_ablation.sh") == "configs/azr_7b.yaml"
    # Table 2's model (Qwen2.5-7B base) and that model's official seed files come first.
    script = (ROOT / "slurm" / "azr_ablation.sh").read_text()
    table2 = re.search(r"table2=\(\n(.*?)\n\)", script, re.S).group(1).split()
    base = load_config("configs/azr_7b.yaml", table2)
    assert base.model.path == "/models/Qwen2.5-7B"
    assert Path(base.azr.seed_io_path).name == "7b_seed_io.jsonl"
    assert Path(base.azr.seed_induction_path).name == "7b_code_f_seed_io.jsonl"
    for name, *overrides in entries:
        cfg = load_config("configs/azr_7b.yaml", [*table2, *overrides])
        assert (cfg == base) == (name == "full"), name
    assert load_config("configs/azr_7b.yaml", entries[1][1:]).azr.task_types == ["deduction"]


@pytest.mark.parametrize(("index", "rc", "expected"), [
    (1, 0, "deduction-only  azr.task_types=[deduction]"),
    (4, 0, "solver-only     azr.train_propose=false"),
    (5, 2, "array index 5 is outside the 5 entries"),
])  # fmt: skip
def test_array_index_picks_its_entry(index, rc, expected):
    r = subprocess.run(
        ["bash", "-c", f"set -eu; source slurm/launch.sh; azr_array_entry {TABLE2} {index}"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert r.returncode == rc
    assert expected in (r.stdout if rc == 0 else r.stderr)


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "slurm").glob("*.sh")))
def test_scripts_parse(script):
    r = subprocess.run(["bash", "-n", f"slurm/{script}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if script != "launch.sh":
        opts = sbatch_options(script)
        assert {"requeue", "signal", "open-mode"} <= opts.keys()
        assert (ROOT / launched_config(script)).is_file()


def test_shipped_recipe_without_weights_fails_with_a_clear_error(tmp_path, capsys):
    rc, _, err = run_preflight(capsys, 8, "configs/azr_14b.yaml", f"run.output_dir={tmp_path}")
    assert rc == 2
    assert "model.path /models/Qwen2.5-Coder-14B does not exist" in err
    assert "Qwen/Qwen2.5-Coder-14B" in err and "azr convert hf-to-mcore" in err


@pytest.mark.sandbox
def test_preflight_starts_the_sandbox_and_refuses_a_node_without_one(tmp_path, capsys):
    """The executor's doctor runs in the preflight (before any rank loads a model): verified
    here with the real bubblewrap sandbox; a node whose bubblewrap is missing is one line."""
    args = [f"run.output_dir={tmp_path}", "executor.workers=2"]
    rc = preflight.main(["--world", "1", "configs/tiny_cpu.yaml", *args])
    _, err = capsys.readouterr()
    assert rc == 0 and "sandbox verified from inside a job: 8 layers" in err, err
    rc = preflight.main(
        ["--world", "1", "configs/tiny_cpu.yaml", *args, "executor.bwrap=/nonexistent/bwrap"]
    )
    _, err = capsys.readouterr()
    assert rc == 2 and "sandbox does not start on this node" in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("script", ["azr_14b.sh", "azr_7b.sh", "azr_32b.sh", "azr_tiny_cpu.sh"])
def test_recipes_run_the_executor_farm_as_a_second_component(script):
    # One `azr executor serve` per node of component 1 (slurm/launch.sh, _azr_farm_start).
    farm = sbatch_options(script, component=1)
    assert farm["ntasks-per-node"] == "1" and "gpus-per-node" not in farm
    assert farm["time"] == sbatch_options(script)["time"]


def test_preflight_leaves_the_sandbox_to_the_farm(tmp_path, capsys):
    """With a farm the GPU nodes run no sandbox (a heterogeneous job's trainer nodes need no
    bubblewrap): the preflight does not start one there."""
    args = [f"run.output_dir={tmp_path}", "executor.bwrap=/nonexistent/bwrap"]
    farm = ["executor.endpoints=[http://127.0.0.1:1]", "executor.token_file=/dev/null"]
    rc = preflight.main(["--world", "1", "configs/tiny_cpu.yaml", *args, *farm])
    _, err = capsys.readouterr()
    assert rc == 0 and "executor farm's nodes" in err, err
