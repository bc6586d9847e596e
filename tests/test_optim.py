"""The optimizers runs build (``models.optim``): torch's fused kernels, checked
against torch's default (single-tensor) implementation of the same update."""
import copy
import dataclasses

import torch

from benchmark.config import RunConfig
from benchmark.train import Trainer
from models.optim import adam, sgd


def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen)) for shape in ((32, 9, 196), (64, 49), (10,))]


def _steps(optimizer, params, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        optimizer.step()


def _same_run(make_ours, make_default, steps=30):
    ours, default = _params(), _params()
    _steps(make_ours(ours), ours, steps)
    _steps(make_default(default), default, steps)
    return ours, default


def test_fused_adam_takes_the_default_adams_steps_to_rounding():
    options = dict(lr=3e-3, betas=(0.9, 0.99), eps=1e-6, weight_decay=1e-3)
    ours, default = _same_run(lambda p: adam(p, **options), lambda p: torch.optim.Adam(p, foreach=False, **options))
    assert adam(ours).param_groups[0]["fused"] is True
    moved = max((p - q).abs().max().item() for p, q in zip(ours, _params()))
    assert moved > 0.05  # the steps did something
    for p, q in zip(ours, default):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5)


def test_fused_sgd_takes_the_default_sgds_steps_to_rounding():
    options = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)
    ours, default = _same_run(lambda p: sgd(p, **options), lambda p: torch.optim.SGD(p, foreach=False, **options))
    assert sgd(ours, lr=0.1).param_groups[0]["fused"] is True
    for p, q in zip(ours, default):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5)


def test_a_checkpoint_of_the_default_step_resumes_on_it_exactly():
    # Runs checkpointed before the fused step existed continue exactly as they
    # would have without the stop: the saved flags win over the new default.
    straight = _params()
    optimizer = torch.optim.Adam(straight, lr=3e-3)
    _steps(optimizer, straight, 5, seed=1)
    state = copy.deepcopy(optimizer.state_dict())  # a checkpoint, not the live state
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in straight]
    _steps(optimizer, straight, 5, seed=2)
    reloaded = adam(resumed, lr=3e-3)
    reloaded.load_state_dict(state)
    assert not reloaded.param_groups[0]["fused"]
    _steps(reloaded, resumed, 5, seed=2)
    for p, q in zip(straight, resumed):
        assert torch.equal(p, q)


def test_params_without_a_fused_kernel_get_torchs_default():
    params = [torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))]
    optimizer = adam(params, lr=0.1)
    assert optimizer.param_groups[0]["fused"] is None
    params[0].grad = torch.ones(3, dtype=torch.complex64)
    optimizer.step()  # the default step handles what fused cannot
    assert params[0].abs().min() > 0


def test_runs_and_target_propagation_inverses_step_fused(tiny_root):
    for optimizer_name in ("adam", "sgd"):
        config = RunConfig(dataset="mnist", arch="fc", rule="dtp-par", epochs=1, optimizer=optimizer_name)
        trainer = Trainer(config, data_dir=tiny_root, progress=False).prepare()
        assert trainer.optimizer.param_groups[0]["fused"] is True
        assert trainer.rule.inverse_optimizer.param_groups[0]["fused"] is True


def test_records_say_which_kernel_stepped_and_a_resumed_run_keeps_its_own(tiny_root, tmp_path):
    config = RunConfig(dataset="mnist", arch="fc", rule="bp", epochs=1, batch_size=32)
    assert Trainer(config, data_dir=tiny_root, progress=False).run(str(tmp_path / "new"))["optimizer_step"] == "fused"
    old = Trainer(config, data_dir=tiny_root, progress=False).prepare()
    old.optimizer = torch.optim.Adam(old.model.parameters(), lr=config.lr)  # a run begun before the fused step
    old.run(str(tmp_path / "old"))
    longer = Trainer(dataclasses.replace(config, epochs=2), data_dir=tiny_root, progress=False)
    record = longer.run(str(tmp_path / "old"), resume=True)
    assert record["summary"]["epochs_done"] == 2
    assert record["optimizer_step"] == "default" and not longer.optimizer.param_groups[0]["fused"]
