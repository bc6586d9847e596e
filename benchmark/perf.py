"""``cli.py bench``: speed and memory of the LC layer, the rules and the harness.

All figures of one table are measured in the same process, interleaved in
rounds, and reported as medians after warm-up; on noisy machines the ratios
are what count. Peak memory is the rise of the process's peak resident set
(CPU, Linux) or of the CUDA allocator's peak (GPU) during the measured call.
"""
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

from models import RULES, build_network, make_rule
from models.inputs import INPUT_SHAPES
from models.lc import LocallyConnected2d
from models.networks import same_padding
from models.optim import adam

from .errors import ConfigError
from .runtime import exact_memory_accounting, release_memory

# (name, C_in, C_out, size, kernel, stride, batch) of the Bartunov LC layers.
LC_SHAPES = [
    ("MNIST LC1", 1, 32, 28, 3, 2, 128),
    ("MNIST LC2", 32, 64, 14, 3, 2, 128),
    ("CIFAR-10 LC1", 3, 64, 32, 5, 2, 128),
    ("CIFAR-10 LC2", 64, 128, 16, 5, 2, 128),
    ("CIFAR-10 LC3", 128, 256, 8, 3, 1, 128),
    ("ImageNet LC1", 3, 48, 224, 9, 4, 8),
    ("ImageNet LC2", 48, 48, 56, 3, 2, 8),
]
# Alternating target-propagation schedules do half of their parallel twin's
# step in each epoch, so only the parallel ones are timed.
RULE_NAMES = [name for name in RULES.registered(plugins=False)
              if RULES.get(name).schedule == "parallel"]


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rounds(functions, device, repeats, warmup=2):
    """Median seconds per call of each function, interleaved round by round."""
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def _rss_kib(field):
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field):
                return int(line.split()[1])
    raise OSError(field)


def peak_memory_mb(fn, device):
    """Extra peak memory (MB) while running ``fn`` once; None if not measurable."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        with exact_memory_accounting():
            fn()  # settle allocations made under the speed setting
            release_memory()
            with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")  # reset the peak RSS (VmHWM) to the current RSS
            base = _rss_kib("VmRSS:")
            fn()
            return (_rss_kib("VmHWM:") - base) / 1024
    except OSError:
        return None


# 1. the LC layer ---------------------------------------------------------------------------
def broadcast_lc(x, weight, bias, kernel, stride, padding):
    """The reference formula this project started from: an [N, C_out, CKK, L]
    broadcast product summed over the receptive field."""
    cols = F.unfold(x, kernel, padding=padding, stride=stride)
    return (cols.unsqueeze(1) * weight.unsqueeze(0)).sum(2) + bias


def _layer_case(c_in, c_out, size, kernel, stride, batch, device, network_layout):
    pad = same_padding(size, kernel, stride)
    layer = LocallyConnected2d(c_in, c_out, size, size, kernel, stride, pad).to(device)
    x = torch.randn(batch, c_in, size, size, device=device)
    if network_layout:
        # Inside the network an LC layer's input is the previous LC layer's
        # output, stored [H, W, C, N]; feed the layer what it sees there.
        x = x.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)
    x.requires_grad_(True)
    conv = torch.nn.Conv2d(c_in, c_out, kernel, stride, pad).to(device)
    x_conv = x.detach().contiguous().requires_grad_(True)
    return layer, conv, x, x_conv, pad


def _fwd_bwd(module_or_fn, x, params):
    """One forward and backward, gradients returned (not accumulated into .grad)."""
    inputs = [x, *params]

    def step():
        out = module_or_fn(x)
        return torch.autograd.grad(out, inputs, torch.ones_like(out))
    return step


def bench_lc_layers(device, repeats=5, quick=False, memory_budget_gb=None):
    if memory_budget_gb is None:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if device.type == "cpu" \
            else torch.cuda.get_device_properties(device).total_memory / 2**30
        memory_budget_gb = total / 4
    rows = []
    shapes = LC_SHAPES[:2] if quick else LC_SHAPES
    for name, c_in, c_out, size, kernel, stride, batch in shapes:
        if quick:
            batch = 8
        layer, conv, x, x_conv, pad = _layer_case(c_in, c_out, size, kernel, stride, batch, device,
                                                  network_layout=c_in > 3)
        g = layer.geometry
        flops = 3 * 2 * batch * g.out_channels * g.receptive_field * g.positions  # fwd + 2 bwd GEMMs
        w_ref = layer.weight.detach().clone().requires_grad_(True)
        b_ref = layer.bias.detach().clone().requires_grad_(True)
        x_ref = x.detach().contiguous()
        # The broadcast product and its gradient dominate the reference's memory.
        need_gb = 3 * batch * g.out_channels * g.receptive_field * g.positions * 4 / 2**30
        ref_batch = batch
        while ref_batch > 1 and need_gb * ref_batch / batch > memory_budget_gb:
            ref_batch //= 2
        x_small = x_ref[:ref_batch].clone().requires_grad_(True)
        reference = _fwd_bwd(lambda t: broadcast_lc(t, w_ref, b_ref, kernel, stride, pad), x_small,
                             [w_ref, b_ref])
        cases = {"ours": _fwd_bwd(layer, x, list(layer.parameters())),
                 "conv2d": _fwd_bwd(conv, x_conv, list(conv.parameters()))}
        times = time_rounds(cases, device, repeats)
        start = time.perf_counter()
        reference()  # one untimed call is enough to know whether it is hopeless
        first = time.perf_counter() - start
        if first * batch / ref_batch > 30:
            ref_time = first * batch / ref_batch
            ref_note = "> 30 s (one call)"
        else:
            ref_time = time_rounds({"ref": reference}, device, max(1, repeats // 2), warmup=0)["ref"] \
                * batch / ref_batch
            ref_note = "" if ref_batch == batch else f"batch {ref_batch}, x{batch // ref_batch}"
        memory = {key: peak_memory_mb(fn, device) for key, fn in cases.items()}
        memory["reference"] = peak_memory_mb(reference, device)
        cols_mb = batch * g.receptive_field * g.positions * 4 / 2**20
        weight_grad_mb = layer.weight.numel() * layer.weight.element_size() / 2**20
        rows.append({
            "layer": name, "batch": batch, "ref_ms": ref_time * 1e3, "ref_note": ref_note,
            "ours_ms": times["ours"] * 1e3, "conv_ms": times["conv2d"] * 1e3,
            "ref_mb": memory["reference"] * (batch / ref_batch) if memory["reference"] else None,
            "ours_mb": memory["ours"], "conv_mb": memory["conv2d"], "cols_mb": cols_mb,
            "extra_over_cols": ((memory["ours"] - weight_grad_mb) / cols_mb) if memory["ours"] else None,
            "ours_gflops": flops / times["ours"] / 1e9, "ref_gflops": flops / ref_time / 1e9,
            "speedup_vs_ref": ref_time / times["ours"], "vs_conv": times["ours"] / times["conv2d"],
        })
    return rows


# 2. and 4. rule step time and memory ----------------------------------------------------------
def _training_step(model, rule, optimizer, x, y):
    rule.start_epoch()
    return lambda: rule.train_step(model, x, y, optimizer)


def _rule_setup(family, arch, rule_name, batch, device, seed=0):
    torch.manual_seed(seed)
    model = build_network(arch, family, 10)
    rule = make_rule(rule_name).attach(model, torch.Generator().manual_seed(seed), INPUT_SHAPES[family])
    model.to(device)
    rule.moved_to(device)
    optimizer = adam(model.parameters(), lr=1e-5)
    x = torch.randn(batch, *INPUT_SHAPES[family], device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return _training_step(model, rule, optimizer, x, y)


def bench_rules(device, families=("mnist", "cifar10"), archs=("fc", "conv", "lc"), repeats=7,
                batch=128, rules=RULE_NAMES):
    rows = []
    for family in families:
        for arch in archs:
            steps = {name: _rule_setup(family, arch, name, batch, device) for name in rules}
            times = time_rounds(steps, device, repeats)
            memory = {name: peak_memory_mb(step, device) for name, step in steps.items()}
            rows.append({"family": family, "arch": arch, "bp_ms": times["bp"] * 1e3,
                         "ratios": {n: times[n] / times["bp"] for n in rules},
                         "memory_mb": memory})
            del steps
    return rows


# 3. harness overhead --------------------------------------------------------------------------
def _synthetic_dataset(family, n, seed=0):
    from .data import InMemoryDataset, Split
    g = torch.Generator().manual_seed(seed)
    shape = INPUT_SHAPES[family]
    def make(count):
        return Split(torch.randint(0, 256, (count, *shape), dtype=torch.uint8, generator=g),
                                   torch.randint(0, 10, (count,), generator=g))
    return InMemoryDataset(f"synthetic-{family}", family, make(n), make(256), [str(i) for i in range(10)])


def _minimal_loop(data, model, optimizer, batch, device):
    images, labels = data.train.images.to(device), data.train.labels.to(device)
    mean = data.mean.view(1, -1, 1, 1).to(device)
    std = data.std.view(1, -1, 1, 1).to(device)

    def epoch():
        order = torch.randperm(len(labels), device=device)
        for start in range(0, len(labels), batch):
            index = order[start:start + batch]
            x = (images[index].float() / 255 - mean) / std
            loss = F.cross_entropy(model(x), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return epoch


def _dataloader_loop(data, model, optimizer, batch, device):
    from PIL import Image
    from torch.utils.data import DataLoader
    from torchvision import transforms

    class PILDataset(torch.utils.data.Dataset):
        def __init__(self, split):
            self.images = split.images.permute(0, 2, 3, 1).squeeze(-1).numpy()
            self.labels = split.labels.tolist()
            self.transform = transforms.Compose([
                transforms.ToTensor(), transforms.Normalize(data.mean.tolist(), data.std.tolist())])

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return self.transform(Image.fromarray(self.images[i])), self.labels[i]

    loader = DataLoader(PILDataset(data.train), batch_size=batch, shuffle=True)

    def epoch():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return epoch


def bench_harness(device, families=("mnist", "cifar10"), archs=("fc", "conv", "lc"), samples=2048,
                  repeats=3, batch=128):
    from .config import RunConfig
    from .train import Trainer
    rows = []
    for family in families:
        data = _synthetic_dataset(family, samples)
        for arch in archs:
            config = RunConfig(dataset=data.name, arch=arch, rule="bp", epochs=1, batch_size=batch,
                               augment=False)
            trainer = Trainer(config, device=str(device), progress=False, dataset=data).prepare()
            torch.manual_seed(0)
            model = build_network(arch, family, 10).to(device)
            optimizer = adam(model.parameters(), lr=1e-5)
            torch.manual_seed(0)
            model_dl = build_network(arch, family, 10).to(device)
            optimizer_dl = adam(model_dl.parameters(), lr=1e-5)
            epochs = {"trainer": lambda: trainer.train_epoch(1),
                      "minimal": _minimal_loop(data, model, optimizer, batch, device),
                      "dataloader": _dataloader_loop(data, model_dl, optimizer_dl, batch, device)}
            times = time_rounds(epochs, device, repeats, warmup=1)
            rows.append({"family": family, "arch": arch, "samples": samples,
                         "trainer_s": times["trainer"], "minimal_s": times["minimal"],
                         "dataloader_s": times["dataloader"],
                         "vs_minimal": times["trainer"] / times["minimal"],
                         "vs_dataloader": times["trainer"] / times["dataloader"]})
    return rows


# 5. converted networks -----------------------------------------------------------------------------
def bench_convert(device, batch=128, repeats=7, rules=None):
    """A ResNet-20 training step (Adam) as plain PyTorch and converted to each
    rule (default: every rule convert takes): the converted ``bp`` step against
    the plain one is what conversion itself costs; every rule against converted
    ``bp`` is what the rule costs."""
    from models.convert import backward_rules, convert
    from models.zoo import resnet20
    rules = backward_rules() if rules is None else rules

    def step(model):
        model.to(device)
        optimizer = adam(model.parameters(), lr=1e-5)
        x = torch.randn(batch, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (batch,), device=device)

        def one():
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        return one
    steps = {"plain": step(resnet20("cifar10", 10))}
    for rule in rules:
        torch.manual_seed(0)
        steps[rule] = step(convert(resnet20("cifar10", 10), rule, input_shape=(3, 32, 32), quiet=True))
    times = time_rounds(steps, device, repeats)
    return {"batch": batch, "plain_ms": times["plain"] * 1e3, "bp_over_plain": times["bp"] / times["plain"],
            "ratios": {rule: times[rule] / times["bp"] for rule in rules}}


def markdown_convert(row):
    rules = list(row["ratios"])
    lines = [f"Plain ResNet-20 step: {row['plain_ms']:.1f} ms at batch {row['batch']}; converted under bp: "
             f"{row['bp_over_plain']:.3f}x the plain step (the cost of conversion itself).", "",
             "| " + " | ".join(f"{r}/bp" for r in rules) + " |", "|" + "---|" * len(rules),
             "| " + " | ".join(f"{row['ratios'][r]:.3f}" for r in rules) + " |"]
    return "\n".join(lines) + "\n"


# 6. the optimizer step --------------------------------------------------------------------------
def bench_optimizer(device, nets=(("mnist", "fc"), ("mnist", "lc"), ("cifar10", "fc"), ("cifar10", "lc")),
                    repeats=7):
    """Adam's step on each net's parameters: torch's default implementation
    against the fused one every run uses (``models.optim.adam``)."""
    rows = []
    for family, arch in nets:
        params = list(build_network(arch, family, 10).to(device).parameters())
        for p in params:
            p.grad = torch.randn_like(p)
        default = torch.optim.Adam(params, lr=1e-5)
        fused = adam(params, lr=1e-5)
        times = time_rounds({"default": default.step, "fused": fused.step}, device, repeats)
        rows.append({"family": family, "arch": arch, "params": sum(p.numel() for p in params),
                     "fused_kernel": bool(fused.param_groups[0]["fused"]),
                     "default_ms": times["default"] * 1e3, "fused_ms": times["fused"] * 1e3})
    return rows


def markdown_optimizer(rows):
    lines = ["| family | arch | parameters | default Adam step ms | fused Adam step ms | speed-up |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        fused = f"{r['fused_ms']:.2f}" + ("" if r["fused_kernel"] else " (no fused kernel here)")
        lines.append(f"| {r['family']} | {r['arch']} | {r['params']:,} | {r['default_ms']:.2f} | {fused} "
                     f"| {r['default_ms'] / r['fused_ms']:.1f}x |")
    return "\n".join(lines) + "\n"


# formatting -------------------------------------------------------------------------------------
def _fmt(value, spec=".1f", none="n/a"):
    return none if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def markdown_lc(rows):
    lines = ["| layer | batch | broadcast ms | ours ms | conv2d ms | ours/broadcast speed-up | ours/conv2d time "
             "| ours GFLOP/s | broadcast GFLOP/s | peak MB broadcast | peak MB ours | peak MB conv2d "
             "| unfolded input MB | ours minus weight grad, / unfolded input |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        note = f" ({r['ref_note']})" if r["ref_note"] else ""
        lines.append(f"| {r['layer']} | {r['batch']} | {_fmt(r['ref_ms'])}{note} | {_fmt(r['ours_ms'])} | "
                     f"{_fmt(r['conv_ms'])} | {_fmt(r['speedup_vs_ref'])}x | {_fmt(r['vs_conv'], '.2f')}x | "
                     f"{_fmt(r['ours_gflops'])} | {_fmt(r['ref_gflops'], '.2f')} | {_fmt(r['ref_mb'], '.0f')} | "
                     f"{_fmt(r['ours_mb'], '.0f')} | {_fmt(r['conv_mb'], '.0f')} | {_fmt(r['cols_mb'], '.0f')} | "
                     f"{_fmt(r['extra_over_cols'], '.2f')}x |")
    return "\n".join(lines)


def _per_rule_markdown(rows, key, label, fmt):
    """One row per (dataset, arch), one column per rule, from ``row[key][rule]``."""
    rules = list(rows[0][key]) if rows else RULE_NAMES
    lead = [("dataset", "family"), ("arch", "arch")] + ([("bp step ms", "bp_ms")] if key == "ratios" else [])
    lines = ["| " + " | ".join([name for name, _ in lead] + [label.format(r) for r in rules]) + " |",
             "|" + "---|" * (len(lead) + len(rules))]
    for r in rows:
        cells = [str(r[field]) if field != "bp_ms" else _fmt(r[field]) for _, field in lead]
        lines.append("| " + " | ".join(cells + [fmt(r[key][n]) for n in rules]) + " |")
    return "\n".join(lines)


def markdown_rules(rows):
    return _per_rule_markdown(rows, "ratios", "{}/bp", lambda v: f"{v:.3f}")


def markdown_memory(rows):
    return _per_rule_markdown(rows, "memory_mb", "{} MB", lambda v: _fmt(v, ".0f"))


def markdown_harness(rows):
    lines = ["| dataset | arch | samples | trainer s/epoch | minimal loop s | DataLoader+ToTensor s "
             "| trainer/minimal | trainer/DataLoader |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['arch']} | {r['samples']} | {r['trainer_s']:.3f} | "
                     f"{r['minimal_s']:.3f} | {r['dataloader_s']:.3f} | {r['vs_minimal']:.3f} | "
                     f"{r['vs_dataloader']:.3f} |")
    return "\n".join(lines)


def _section_lc(device, quick, families):
    rows = bench_lc_layers(device, repeats=2 if quick else 7, quick=quick)
    return rows, ["## 1. Locally connected layer, forward + backward\n\n" + markdown_lc(rows)]


def _section_rules(device, quick, families):
    kwargs = dict(families=("mnist",), archs=("fc", "lc"), repeats=2, batch=8) if quick else {}
    if families:
        kwargs["families"] = tuple(families)
    rows = bench_rules(device, **kwargs)
    return rows, ["## 2. Training-step time of each rule relative to bp (Adam step included)\n\n"
                  + markdown_rules(rows),
                  "## 3. Peak memory of one training step\n\n" + markdown_memory(rows)]


def _section_harness(device, quick, families):
    kwargs = dict(families=("mnist",), archs=("fc",), samples=256, repeats=1) if quick else {}
    rows = bench_harness(device, **kwargs)
    return rows, ["## 4. Harness overhead: epoch time\n\n" + markdown_harness(rows)]


def _section_convert(device, quick, families):
    row = bench_convert(device, **(dict(batch=8, repeats=2) if quick else {}))
    return row, ["## 5. A converted ResNet-20: each rule's step relative to bp (Adam step included)\n\n"
                 + markdown_convert(row)]


def _section_optim(device, quick, families):
    rows = bench_optimizer(device, **(dict(nets=(("mnist", "fc"),), repeats=2) if quick else {}))
    return rows, ["## 6. The optimizer step: torch's default Adam against the fused one runs use\n\n"
                  + markdown_optimizer(rows)]


# The one list of sections, in print order; ``cli.py bench --section`` offers these names.
SECTIONS = {"lc": _section_lc, "rules": _section_rules, "harness": _section_harness,
            "convert": _section_convert, "optim": _section_optim}


def run_bench(device, sections=None, quick=False, echo=print, families=None):
    """Run the chosen sections (all when None) in the order of ``SECTIONS`` and echo
    Markdown tables; returns the raw rows by section name."""
    from .records import host_info
    from .run_model import describe_device
    unknown = [name for name in sections or () if name not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown bench section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    echo(f"# biobench bench on {describe_device(device)}; torch {torch.__version__}; "
         f"{host_info()['cpu_count']} cores{' (quick mode: tiny sizes, figures not meaningful)' if quick else ''}\n")
    results = {}
    for name, section in SECTIONS.items():
        if sections and name not in sections:
            continue
        results[name], tables = section(device, quick, families)
        for table in tables:
            echo(table + "\n")
    return results
