"""CPU mode: install(), the CUDA shims, the stand-in vLLM engine and the tiny assets.

Ground truths are independent of the code under test: greedy tokens and log-probs are
recomputed with plain forward passes of the same transformers model, weight sync goes
through a real gloo group, reward rates are checked with scipy's binomial test. The
full-trainer runs are in tests/test_e2e_cpu.py.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from openrlhf_cero import cpu
from openrlhf_cero.cpu import paths, shims, stand_in_reward, tiny

cpu.install()  # the whole module needs the stand-in vllm and the shims

import torch.distributed as dist  # noqa: E402
import vllm  # noqa: E402  (the stand-in, put on sys.path by install())


# --- helpers ------------------------------------------------------------------------------


def run(coro):
    return asyncio.run(coro)


async def collect(engine, prompt_ids, params, request_id="r"):
    final = None
    async for out in engine.generate({"prompt_token_ids": prompt_ids}, params, request_id=request_id):
        final = out
    return final


def make_engine(model_dir: Path, seed: int = 0, **kwargs) -> vllm.AsyncLLMEngine:
    args = vllm.AsyncEngineArgs(
        model=str(model_dir),
        seed=seed,
        dtype="float32",
        max_model_len=64,
        worker_extension_cls="openrlhf.trainer.ray.vllm_worker_wrap.WorkerWrap",
        **kwargs,
    )
    return vllm.AsyncLLMEngine.from_engine_args(args)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def _leave_no_default_process_group():
    """Engines and the mesh test initialise a one-rank gloo default group; drop it afterwards."""
    was_initialized = dist.is_initialized()
    yield
    if dist.is_initialized() and not was_initialized:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    return tiny.build(tmp_path_factory.mktemp("tiny"), prompts=8, seed=0)


@pytest.fixture(scope="module")
def model_dir(assets) -> Path:
    return assets / tiny.MODEL_DIR


@pytest.fixture(scope="module")
def hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


PROMPT = [40, 41, 42, 43, 44]


# --- install() ------------------------------------------------------------------------------


def test_install_is_idempotent():
    path_entries = sys.path.count(str(paths.VLLM_STANDIN_DIR))
    current_device = torch.cuda.current_device
    cpu.install()
    cpu.install()
    assert cpu.installed()
    assert sys.path.count(str(paths.VLLM_STANDIN_DIR)) == path_entries <= 1
    assert torch.cuda.current_device is current_device
    assert vllm.IS_CPU_STANDIN and vllm.__file__.startswith(str(paths.VLLM_STANDIN_DIR))


def test_install_makes_openrlhf_importable():
    import flash_attn  # noqa: F401  (needs the stubbed CUDA extension module)

    module = importlib.import_module("openrlhf.trainer.ray.vllm_engine")
    assert module.vllm is vllm
    with pytest.raises(RuntimeError, match="attn_implementation"):
        importlib.import_module("flash_attn_2_cuda").fwd()


def test_install_does_nothing_when_cuda_is_available():
    code = (
        "import sys, torch\n"
        "torch.cuda.is_available = lambda: True\n"
        "original = torch.cuda.synchronize\n"
        "from openrlhf_cero import cpu\n"
        "cpu.install()\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('vllm') is None, 'stand-in vllm was installed'\n"
        "assert torch.cuda.synchronize is original, 'CUDA shims were applied'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_ray_init_kwargs_carry_worker_setup():
    kwargs = cpu.ray_init_kwargs()
    env = kwargs["runtime_env"]["env_vars"]
    assert kwargs["num_gpus"] >= 3 and kwargs["num_cpus"] >= kwargs["num_gpus"]
    # A cluster of its own, never one a `ray start` left running on the machine (RAY_ADDRESS
    # is how a user asks for a running cluster; that case is tested through ray job submit).
    assert kwargs["address"] == "local"
    assert env["OPENRLHF_CERO_CPU"] == "1" and env["DS_ACCELERATOR"] == "cpu"
    assert env["TORCH_EXTENSIONS_DIR"] == paths.torch_extensions_dir()
    for key in ("TOKENIZERS_PARALLELISM", "NCCL_DEBUG", "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS"):
        assert key in env  # OpenRLHF's own defaults are kept
    assert str(paths.PACKAGE_PARENT_DIR) in env["PYTHONPATH"].split(":")
    module_name, _, function = kwargs["runtime_env"]["worker_process_setup_hook"].rpartition(".")
    assert callable(getattr(importlib.import_module(module_name), function))


def test_worker_hook_pins_threads_and_seeds(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))  # the hook's import patches stay here
    monkeypatch.setattr(cpu, "_ppo_seeding_installed", False)
    monkeypatch.setenv("OPENRLHF_CERO_CPU", "1")
    monkeypatch.setenv("OPENRLHF_CERO_CPU_SEED", "123")
    threads = torch.get_num_threads()
    try:
        cpu.setup_ray_worker()
        assert torch.get_num_threads() == 1
        first = torch.rand(3)
        cpu.setup_ray_worker()
        assert torch.equal(torch.rand(3), first)
    finally:
        torch.set_num_threads(threads)


FAKE_PPO_TRAINER = """
from types import SimpleNamespace
from torch.utils.data import DataLoader


class Trainer:  # what OpenRLHF's ActorPPOTrainer.ppo_train does with its replay buffer
    def __init__(self, steps, wrapped=True):
        engine = SimpleNamespace(global_steps=steps)  # DeepSpeed's count, kept in checkpoints
        self.actor = SimpleNamespace(model=engine) if wrapped else engine
        self.args = SimpleNamespace(train=SimpleNamespace(seed=42))

    def ppo_train(self, kl_ctl):
        return [int(i) for batch in DataLoader(range(16), batch_size=4, shuffle=True) for i in batch]
"""


def test_ppo_updates_are_seeded_by_optimizer_step(tmp_path, monkeypatch):
    """Issue 11: the replay-buffer shuffle draws from the process's torch generator, which
    a resumed actor process has not advanced (checkpoints do not save it). CPU mode seeds
    each update from (--train.seed, optimizer steps), which the checkpoint restores; the
    patch lands when the module is imported."""
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "fake_ppo_trainer_issue11.py").write_text(FAKE_PPO_TRAINER)
    monkeypatch.delitem(sys.modules, "fake_ppo_trainer_issue11", raising=False)
    cpu._after_import("fake_ppo_trainer_issue11", lambda module: cpu._seed_ppo_train(module.Trainer, "actor"))
    trainer_cls = importlib.import_module("fake_ppo_trainer_issue11").Trainer
    monkeypatch.delitem(sys.modules, "fake_ppo_trainer_issue11")
    unseeded = trainer_cls.ppo_train.__wrapped__

    torch.manual_seed(0)
    uninterrupted = [trainer_cls(steps).ppo_train(0.0) for steps in range(3)]
    assert len({tuple(order) for order in uninterrupted}) == 3  # still shuffled, per step
    torch.manual_seed(0)
    assert unseeded(trainer_cls(2), 0.0) != uninterrupted[2]  # a fresh process draws step 1's order

    torch.manual_seed(123)  # a resumed process: its generator is wherever it is
    torch.rand(5)
    before = torch.get_rng_state()
    assert trainer_cls(2).ppo_train(0.0) == uninterrupted[2]
    assert torch.equal(torch.get_rng_state(), before)  # the process's generator is left alone
    cpu._seed_ppo_train(trainer_cls, "actor")  # idempotent
    assert trainer_cls(2, wrapped=False).ppo_train(0.0) == uninterrupted[2]  # the critic holds the engine


@pytest.mark.parametrize("module_name", sorted(cpu._PPO_TRAINERS))
def test_ppo_seeding_targets_exist_in_openrlhf(module_name):
    class_name, model_attr = cpu._PPO_TRAINERS[module_name]
    source = Path(importlib.util.find_spec(module_name).origin).read_text()  # without importing DeepSpeed
    assert f"class {class_name}(" in source and "def ppo_train(self" in source
    assert f"self.{model_attr} = {model_attr}" in source and "shuffle=should_shuffle" in source


# --- shims -----------------------------------------------------------------------------------


def test_cuda_calls_used_by_openrlhf_work_on_cpu():
    assert shims.applied()
    torch.cuda.set_device(0)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    assert torch.cuda.current_stream() is None
    device = torch.cuda.current_device()
    assert torch.zeros(2).to(device).device.type == "cpu"
    assert torch.tensor([1], device=device).device.type == "cpu"
    # replay_buffer.py builds a device *name* from it and never moves data there
    assert torch.device(f"cuda:{device}") == torch.device("cuda", 0)
    assert not torch.cuda.is_available()


def test_device_mesh_and_barrier_on_gloo():
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    from openrlhf.utils.distributed_util import torch_dist_barrier_and_cuda_sync
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cuda", (1, 1, 1), mesh_dim_names=("dp", "sp", "tp"))
    assert mesh.device_type == "cpu"
    assert dist.get_world_size(group=mesh["dp"].get_group()) == 1
    torch_dist_barrier_and_cuda_sync()


# --- stand-in engine ---------------------------------------------------------------------------


def test_sampling_params_reject_what_the_stand_in_cannot_honour():
    with pytest.raises(TypeError):
        vllm.SamplingParams(use_beam_search=True)
    with pytest.raises(ValueError, match="min_tokens"):
        vllm.SamplingParams(max_tokens=2, min_tokens=3)
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        vllm.AsyncEngineArgs(model="x", tensor_parallel_size=2)


def test_greedy_generation_matches_step_by_step_argmax(model_dir, hf_model):
    engine = make_engine(model_dir)
    out = run(collect(engine, PROMPT, vllm.SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)))
    completion = out.outputs[0]

    ids = list(PROMPT)
    with torch.no_grad():
        for _ in range(8):
            ids.append(int(hf_model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert completion.token_ids == ids[len(PROMPT) :]
    assert completion.finish_reason == "length"
    assert out.prompt_token_ids == PROMPT


@pytest.mark.parametrize("mode,temperature", [("raw_logprobs", 0.7), ("processed_logprobs", 0.7)])
def test_logprobs_match_a_full_forward(model_dir, hf_model, mode, temperature):
    engine = make_engine(model_dir, seed=3, logprobs_mode=mode)
    params = vllm.SamplingParams(temperature=temperature, max_tokens=6, logprobs=1, ignore_eos=True)
    completion = run(collect(engine, PROMPT, params)).outputs[0]

    with torch.no_grad():
        logits = hf_model(torch.tensor([PROMPT + completion.token_ids])).logits[0, len(PROMPT) - 1 : -1]
    scale = 1.0 if mode == "raw_logprobs" else temperature
    expected = torch.log_softmax(logits / scale, dim=-1)
    for position, (token, entry) in enumerate(zip(completion.token_ids, completion.logprobs)):
        assert entry[token].logprob == pytest.approx(expected[position, token].item(), abs=1e-4)
        top = int(expected[position].argmax())
        assert entry[top].rank == 1
    assert completion.cumulative_logprob == pytest.approx(
        sum(entry[t].logprob for t, entry in zip(completion.token_ids, completion.logprobs))
    )


def test_n_samples_are_distinct_and_deterministic_for_a_seed(model_dir):
    params = vllm.SamplingParams(temperature=1.0, max_tokens=10, ignore_eos=True)

    async def openrlhf_style(engine, num_samples):
        # RolloutRayActor.generate_responses: num_samples concurrent n=1 requests
        outs = await asyncio.gather(*(collect(engine, PROMPT, params, f"r{i}") for i in range(num_samples)))
        return [o.outputs[0].token_ids for o in outs]

    first = run(openrlhf_style(make_engine(model_dir, seed=7), 4))
    again = run(openrlhf_style(make_engine(model_dir, seed=7), 4))
    other = run(openrlhf_style(make_engine(model_dir, seed=8), 4))
    assert len(first) == 4 and all(len(t) == 10 for t in first)
    assert len({tuple(t) for t in first}) == 4  # fresh samples per request
    assert first == again
    assert first != other

    engine = make_engine(model_dir, seed=7)
    n_three = run(collect(engine, PROMPT, vllm.SamplingParams(n=3, max_tokens=10, ignore_eos=True)))
    assert [c.index for c in n_three.outputs] == [0, 1, 2]
    # a request seed fixes the sample whatever the engine seed or history
    seeded = vllm.SamplingParams(seed=11, max_tokens=10, ignore_eos=True)
    a = run(collect(make_engine(model_dir, seed=1), PROMPT, seeded)).outputs[0].token_ids
    b = run(collect(make_engine(model_dir, seed=2), PROMPT, seeded)).outputs[0].token_ids
    assert a == b


def test_samples_follow_the_weights_and_survive_an_engine_restart(model_dir):
    """Issue 11: a resumed run starts a new engine process and broadcasts the checkpoint's
    weights to it before generating (``PPOTrainer.fit``), as the uninterrupted run's engine
    received them after that step. Both must then draw the same samples: the seeds may
    depend on the weights and on visits since the last weight load, not on the engine's
    history (a process-lifetime visit counter restarts at 0 after a restart)."""
    params = vllm.SamplingParams(temperature=1.0, max_tokens=10, ignore_eos=True)

    def draw(engine, num_samples):  # RolloutRayActor.generate_responses: n=1 requests
        async def requests():
            return await asyncio.gather(*(collect(engine, PROMPT, params, f"r{i}") for i in range(num_samples)))

        return [tuple(out.outputs[0].token_ids) for out in run(requests())]

    def load(engine, weights):  # what WorkerWrap.update_weight does after the broadcast
        engine._worker.model_runner.model.load_weights(weights.items())

    running = make_engine(model_dir, seed=7)
    pretrained = {name: p.detach().clone() for name, p in running._model.named_parameters()}
    noise = torch.Generator().manual_seed(0)
    # A small step: the same random numbers would mostly give the same tokens again.
    trained = {name: p + 1e-3 * torch.randn(p.shape, generator=noise) for name, p in pretrained.items()}

    step1 = draw(running, 2)
    load(running, trained)
    step2, step2_more = draw(running, 2), draw(running, 2)
    assert len({*step1, *step2, *step2_more}) == 6  # fresh per visit, and for new weights

    restarted = make_engine(model_dir, seed=7)  # a resume: new process, checkpoint weights
    load(restarted, trained)
    assert draw(restarted, 2) == step2
    assert draw(restarted, 2) == step2_more

    # Only the weights count, not how the engine got them or what it drew before.
    load(running, pretrained)
    assert draw(running, 2) == step1
    assert draw(make_engine(model_dir, seed=8), 2) != step1  # the engine seed still counts


def test_stop_tokens_and_min_tokens(model_dir):
    engine = make_engine(model_dir)
    greedy = vllm.SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    first_token = run(collect(engine, PROMPT, greedy)).outputs[0].token_ids[0]

    stop_now = vllm.SamplingParams(temperature=0.0, max_tokens=8, stop_token_ids=[first_token])
    stopped = run(collect(engine, PROMPT, stop_now)).outputs[0]
    assert stopped.token_ids == [first_token] and stopped.finish_reason == "stop"

    held = vllm.SamplingParams(temperature=0.0, max_tokens=8, min_tokens=3, stop_token_ids=[first_token])
    assert len(run(collect(engine, PROMPT, held)).outputs[0].token_ids) >= 3


def test_max_model_len_caps_generation(model_dir):
    engine = make_engine(model_dir)
    long_prompt = [40] * 60
    out = run(collect(engine, long_prompt, vllm.SamplingParams(max_tokens=50, ignore_eos=True))).outputs[0]
    assert len(out.token_ids) == 4 and out.finish_reason == "length"
    with pytest.raises(ValueError, match="max_model_len"):
        run(collect(engine, [40] * 64, vllm.SamplingParams(max_tokens=1)))


def test_weight_broadcast_over_gloo_updates_the_engine(model_dir):
    """OpenRLHF's broadcast path: WorkerWrap.init_process_group / update_weight on the engine
    side, StatelessProcessGroup + PyNcclCommunicator on the trainer side."""
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
    from vllm.distributed.utils import StatelessProcessGroup

    engine = make_engine(model_dir)
    greedy = vllm.SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    before = run(collect(engine, PROMPT, greedy)).outputs[0].token_ids
    assert before != [0, 0, 0]
    port = free_port()
    # An all-zero output head makes every logit 0: greedy decoding then picks token 0.
    new_head = torch.zeros_like(engine._model.lm_head.weight)
    new_norm = torch.full_like(engine._model.model.norm.weight, 0.5)
    sender: dict = {}

    def trainer_rank0():
        group = StatelessProcessGroup.create("127.0.0.1", port, rank=0, world_size=2)
        sender["comm"] = PyNcclCommunicator(group, device=torch.cuda.current_device())

    async def sync():
        thread = threading.Thread(target=trainer_rank0)
        thread.start()
        await engine.collective_rpc("init_process_group", args=("127.0.0.1", port, 1, 2, "openrlhf", "gloo", False))
        thread.join()
        for name, tensor in (("lm_head.weight", new_head), ("model.norm.weight", new_norm)):
            update = asyncio.ensure_future(
                engine.collective_rpc("update_weight", args=(name, torch.float32, tensor.shape))
            )
            await asyncio.to_thread(sender["comm"].broadcast, tensor, 0)
            await update

    run(sync())
    assert torch.equal(engine._model.lm_head.weight.detach(), new_head)
    assert torch.equal(engine._model.model.norm.weight.detach(), new_norm)
    assert run(collect(engine, PROMPT, greedy)).outputs[0].token_ids == [0, 0, 0]
    with pytest.raises(KeyError, match="does not exist"):
        engine._worker.model_runner.model.load_weights([("no.such.weight", new_norm)])


def test_pause_keeps_requests_until_resume_and_sleep_blocks_generation(model_dir):
    engine = make_engine(model_dir)
    params = vllm.SamplingParams(max_tokens=4, ignore_eos=True)

    async def scenario():
        await engine.pause_generation(mode="keep")
        task = asyncio.ensure_future(collect(engine, PROMPT, params, "paused"))
        await asyncio.sleep(0.3)
        assert not task.done()
        assert engine.output_processor.get_num_unfinished_requests() == 1
        await engine.resume_generation()
        out = await asyncio.wait_for(task, timeout=30)
        assert len(out.outputs[0].token_ids) == 4
        assert engine.output_processor.get_num_unfinished_requests() == 0

        await engine.sleep(level=1)
        assert await engine.is_sleeping()
        with pytest.raises(RuntimeError, match="sleep"):
            await collect(engine, PROMPT, params)
        await engine.wake_up(tags=["weights"])
        assert await engine.is_sleeping()  # kv_cache still asleep
        await engine.wake_up(tags=["kv_cache"])
        assert not await engine.is_sleeping()
        await collect(engine, PROMPT, params)

    run(scenario())


# --- tiny assets and the stand-in reward ----------------------------------------------------------


def _file_digests(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_tiny_build_is_deterministic(tmp_path, assets):
    again = tiny.build(tmp_path / "again", prompts=8, seed=0)
    assert _file_digests(again) == _file_digests(assets)
    other = tiny.build(tmp_path / "other", prompts=8, seed=1)
    assert (other / tiny.PROMPTS_FILE).read_bytes() != (assets / tiny.PROMPTS_FILE).read_bytes()


def test_tiny_assets_are_usable(assets):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(assets / tiny.MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(assets / tiny.MODEL_DIR)
    assert (config.hidden_size, config.num_hidden_layers) == (64, 2)
    assert config.vocab_size == len(tokenizer) <= tiny.VOCAB_SIZE
    rows = [json.loads(line) for line in (assets / tiny.PROMPTS_FILE).read_text().splitlines()]
    assert len(rows) == 8
    for row in rows:
        assert tokenizer.decode(tokenizer(row["input"])["input_ids"]) == row["input"]  # lossless
        assert 0.0 <= stand_in_reward.parse_pass_rate(row["label"]) <= 1.0
    messages = [{"role": "user", "content": "hi"}]
    chat = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat == "user: hi\nassistant:"


def test_stand_in_reward_passes_at_the_labelled_rate(assets):
    from scipy.stats import binomtest

    spec = importlib.util.spec_from_file_location("copied_reward", assets / tiny.REWARD_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the copied file, as OpenRLHF loads it

    queries = [f"Question: 2+2?\nAnswer: response {i}" for i in range(4000)]
    for p in (0.0, 0.3, 0.85, 1.0):
        label = stand_in_reward.make_label("4", p)
        out = module.reward_func(queries, queries, [label] * len(queries))
        passes = int(out["rewards"].sum())
        assert out["rewards"].shape == (len(queries),) and set(out["rewards"].tolist()) <= {0.0, 1.0}
        if p in (0.0, 1.0):
            assert passes == p * len(queries)
        else:
            assert binomtest(passes, len(queries), p).pvalue > 1e-4
    repeat = module.reward_func(queries[:5], queries[:5], ["4|p=0.5000"] * 5)["rewards"]
    assert torch.equal(repeat, module.reward_func(queries[:5], queries[:5], ["4|p=0.5000"] * 5)["rewards"])
    with pytest.raises(ValueError, match="pass rate"):
        module.reward_func(["q"], ["q"], ["4"])


def test_smoke_flags_overrides(tmp_path):
    flags = tiny.smoke_flags(
        tmp_path / "a",
        tmp_path / "w",
        rollout__n_samples_per_prompt=8,
        **{"train.async_enable": True, "ckpt.save_steps": None, "actor.adam.betas": (0.9, 0.99)},
    )
    joined = " ".join(flags)
    assert "--rollout.n_samples_per_prompt 8" in joined
    assert "--train.async_enable" in flags and "--ckpt.save_steps" not in flags
    assert "--actor.adam.betas 0.9 0.99" in joined
    assert "--algo.advantage.estimator group_norm" in joined
    assert f"--ckpt.path {tmp_path / 'w' / 'ckpt'}" in joined
    names = [f for f in flags if f.startswith("--")]
    assert len(names) == len(set(names))  # an override replaces, never duplicates


def test_prebuild_ops_rejects_unknown_ops():
    from openrlhf_cero.cpu import prebuild_ops

    with pytest.raises(SystemExit, match="valid"):
        prebuild_ops.build(["flash_attn"])
