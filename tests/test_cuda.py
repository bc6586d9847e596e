"""CUDA-only checks, run on a GPU machine by benchmark/gpu_window.sh
(``pytest -m cuda``); without CUDA they skip, saying so."""
import pytest
import torch

from benchmark.config import RunConfig
from benchmark.train import Trainer
from helpers import make_tiny_mnist
from models.lc import LocallyConnected2d

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_lc_layer_on_cuda_matches_the_cpu_in_float64():
    torch.manual_seed(0)
    layer = LocallyConnected2d(3, 8, 16, 16, 3, stride=2, padding=1).double()
    x = torch.randn(5, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    gpu = LocallyConnected2d(3, 8, 16, 16, 3, stride=2, padding=1).double().cuda()
    gpu.load_state_dict(layer.state_dict())
    xg = x.detach().cuda().requires_grad_(True)
    out, out_g = layer(x), gpu(xg)
    torch.testing.assert_close(out_g.cpu(), out)
    out.square().sum().backward()
    out_g.square().sum().backward()
    torch.testing.assert_close(xg.grad.cpu(), x.grad)
    torch.testing.assert_close(gpu.weight.grad.cpu(), layer.weight.grad)


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa", "kp", "dtp-par"])
def test_training_steps_never_synchronise_with_the_host(tmp_path, rule):
    data = make_tiny_mnist(str(tmp_path / "data"), n_train=256, n_test=16)
    config = RunConfig(dataset="mnist", arch="lc", rule=rule, epochs=1, batch_size=64)
    trainer = Trainer(config, data_dir=data, device="cuda", progress=False).prepare()
    x = trainer.normalize(trainer.train.images[:64])
    y = trainer.train.labels[:64]
    trainer.rule.start_epoch()
    trainer.rule.train_step(trainer.model, x, y, trainer.optimizer)  # warm-up: lazy state, cuBLAS handles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.rule.train_step(trainer.model, x, y, trainer.optimizer)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_converting_a_model_on_the_gpu_draws_the_same_feedback_there():
    from biobench import convert
    from models.zoo import resnet20
    torch.manual_seed(0)
    on_cpu = convert(resnet20("cifar10", 10), "fa", seed=5, quiet=True)
    torch.manual_seed(0)
    on_gpu = convert(resnet20("cifar10", 10).cuda(), "fa", seed=5, quiet=True)
    assert on_gpu.fc.feedback_weight.is_cuda
    torch.testing.assert_close(on_gpu.fc.feedback_weight.cpu(), on_cpu.fc.feedback_weight)
    on_gpu(torch.randn(4, 3, 32, 32, device="cuda")).sum().backward()
