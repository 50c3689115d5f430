"""OpenRLHF's trainers with the allocator in place, sync and async.

Each class subclasses OpenRLHF's actor class (``X.__ray_actor_class__``, never the
remote handle) and changes only what is built in ``__init__``:

- the actor that owns the prompt dataloader builds the allocator, wraps the
  dataloader so checkpoints carry the allocator's state, and uses
  :class:`AllocatingSamplesGenerator`;
- the actor that trains uses :class:`VariableGroupExperienceMaker` and adds the
  step's allocator figures to the status dict, which OpenRLHF logs to wandb /
  tensorboard like its own;
- with ``--rollout_scheduler``, the actor that trains also lets the scheduler choose
  each step's training rollouts (:mod:`openrlhf_cero.openrlhf.scheduling_trainer`).

Ray ships these classes to workers by reference to this module, so every worker
imports it and nothing has to be patched in the workers. The one exception is inside
``PPOTrainerAsync.__init__``, which creates its two actors from module globals; the
async class rebinds those two names in its own process before OpenRLHF's constructor
runs.
"""

from __future__ import annotations

import math

import ray
from openrlhf.trainer import ppo_trainer, ppo_trainer_async

from openrlhf_cero.openrlhf.advantages import VariableGroupExperienceMaker
from openrlhf_cero.openrlhf.checkpoint import AllocatorCheckpointingLoader
from openrlhf_cero.openrlhf.flags import allocator_from_args, step_multiple
from openrlhf_cero.openrlhf.generator import AllocatingSamplesGenerator
from openrlhf_cero.openrlhf.scheduler_flags import NO_SCHEDULER, scheduler_name
from openrlhf_cero.openrlhf.scheduling_trainer import SchedulesRollouts, install_scheduling_maker


def _install_allocating_generator(owner) -> None:
    """Give ``owner`` (the actor holding ``prompts_dataloader``) the allocator and our generator.

    ``max_steps`` (OpenRLHF's count of optimizer steps, which sizes the learning-rate
    schedule) follows what the allocator will train:

    - an allocator that spreads a step's budget over more prompts than
      ``rollout.batch_size`` (CERO's ``prompt_oversample``, Pilot-Commit's pilot pool) goes
      through an epoch in fewer steps: ``max_steps`` is scaled to match;
    - one whose step totals vary (CERO's global budget) is told the run's shape (its
      steps, the per-step budget, the multiple each total keeps), and ``max_steps`` is
      the optimizer steps its run budget pays for.
    """
    stock = owner.samples_generator
    args = stock.args
    allocator = allocator_from_args(args)
    budget = args.rollout.batch_size * args.rollout.n_samples_per_prompt
    run_steps = math.ceil(len(owner.prompts_dataloader) / args.rollout.batch_size) * args.train.num_episodes
    allocator.fit_to_run(steps=run_steps, step_budget=budget, step_multiple=step_multiple(args))
    prompts_per_step = allocator.prompts_wanted(budget)
    if allocator.run_rollout_budget is not None:
        owner.max_steps = max(1, allocator.run_rollout_budget // args.train.batch_size * args.train.max_epochs)
    elif prompts_per_step > args.rollout.batch_size:  # never for uniform: OpenRLHF's value stays
        owner.max_steps = max(1, math.ceil(owner.max_steps * args.rollout.batch_size / prompts_per_step))
    owner.prompts_dataloader = AllocatorCheckpointingLoader(
        owner.prompts_dataloader,
        allocator,
        checkpoint_dir=args.ckpt.path,
        fresh_on_resume=args.allocator.fresh_on_resume,
    )
    owner.samples_generator = AllocatingSamplesGenerator(
        strategy=stock.strategy,
        prompts_dataloader=owner.prompts_dataloader,
        eval_dataloader=stock.eval_dataloader,
        tokenizer=stock.tokenizer,
        vllm_engines=stock.vllm_engines,
        allocator=allocator,
    )


def _install_variable_group_advantages(owner) -> None:
    """Our experience maker: advantages over variable groups, and with ``--rollout_scheduler``
    the scheduler's choice of the step's training rollouts (scheduling_trainer.py)."""
    if scheduler_name(owner.args) != NO_SCHEDULER:
        install_scheduling_maker(owner)
        return
    owner.experience_maker = VariableGroupExperienceMaker.replacing(owner.experience_maker)


class _LogsAllocatorMetrics:
    """Adds the step's allocator figures (carried by the RolloutBatch) to the status dict."""

    def train_step(self, rollout_samples, global_step: int):
        status, global_step = super().train_step(rollout_samples, global_step)
        status.update(getattr(rollout_samples, "metrics", {}))
        return status, global_step


class _AllocatingPPOTrainer(SchedulesRollouts, _LogsAllocatorMetrics, ppo_trainer.PPOTrainer.__ray_actor_class__):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _install_allocating_generator(self)
        _install_variable_group_advantages(self)


class _AllocatingGenerateSamplesActor(ppo_trainer_async.GenerateSamplesActor.__ray_actor_class__):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _install_allocating_generator(self)


class _AllocatingTrainingActor(SchedulesRollouts, _LogsAllocatorMetrics, ppo_trainer_async.TrainingActor.__ray_actor_class__):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _install_variable_group_advantages(self)

    def broadcast_to_vllm(self) -> None:
        # Ray copies every inherited method onto the actor class and pickles the copies of
        # a @ray.remote class's own methods by value, with a duplicate of that class in
        # their closure; OpenRLHF's version calls zero-argument super(), which then fails
        # for a subclass ("obj must be an instance or subtype of type"). Calling the
        # function of the class this process imported keeps super() consistent.
        ppo_trainer_async.TrainingActor.__ray_actor_class__.broadcast_to_vllm(self)


AllocatingPPOTrainer = ray.remote(_AllocatingPPOTrainer)
AllocatingGenerateSamplesActor = ray.remote(_AllocatingGenerateSamplesActor)
AllocatingTrainingActor = ray.remote(_AllocatingTrainingActor)


class _AllocatingPPOTrainerAsync(ppo_trainer_async.PPOTrainerAsync.__ray_actor_class__):
    def __init__(self, *args, **kwargs) -> None:
        # OpenRLHF's constructor creates these two by module-global name: point the names
        # at ours while it runs (in this actor's process), then put OpenRLHF's back.
        stock = ppo_trainer_async.GenerateSamplesActor, ppo_trainer_async.TrainingActor
        ppo_trainer_async.GenerateSamplesActor = AllocatingGenerateSamplesActor
        ppo_trainer_async.TrainingActor = AllocatingTrainingActor
        try:
            super().__init__(*args, **kwargs)
        finally:
            ppo_trainer_async.GenerateSamplesActor, ppo_trainer_async.TrainingActor = stock


AllocatingPPOTrainerAsync = ray.remote(_AllocatingPPOTrainerAsync)


def use_allocating_trainers() -> None:
    """In the driver: make OpenRLHF's ``train()`` start our trainer classes (it imports
    ``PPOTrainer`` / ``PPOTrainerAsync`` from these modules when it runs)."""
    ppo_trainer.PPOTrainer = AllocatingPPOTrainer
    ppo_trainer_async.PPOTrainerAsync = AllocatingPPOTrainerAsync
