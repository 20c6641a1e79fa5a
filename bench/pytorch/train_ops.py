"""PyTorch reference times for bench/benches/train_ops.rs, plus one training step of the
restorer-sized net that the Rust side will later be compared against.

Same measurements as train_ops.rs: CPU, f32, median of BENCH_RUNS runs (default 15) after
one warm-up, on BENCH_THREADS threads (default 2). With --json the results go to stdout as
one JSON object (train_ops.rs runs this script that way and prints both sides with their
ratios).
"forward + backward" is forward, sum(out), then gradients for every input that candle treats
as a Var (x and the kernel; x, gamma and beta). torch.autograd.grad is used rather than
.backward() so gradients are returned fresh, as candle's GradStore is, not accumulated.

1. conv3x3 64->64, stride 1, padding 1, no bias, on x of 16x64x32x32 (kernel ~ N(0, 0.05)),
   in NCHW (PyTorch's native layout) and channels_last (NHWC in memory, like ours).
2. GroupNorm(8 groups, eps 1e-5, gamma=1, beta=0) then SiLU on the same activation.
3. The net (input and target 16x64x32x32, both N(0,1); torch.manual_seed(0), default
   PyTorch init, NCHW, every conv 3x3 with bias):

       Block(c):   h = conv_c->c(silu(gn8(x)));  h = conv_c->c(silu(gn8(h)));  return x + h
       s = Block(64)(Block(64)(x))                   # 32x32, 64 channels
       d = conv_64->128(s, stride 2, padding 1)      # 16x16, 128 channels
       d = Block(128)(Block(128)(d))
       u = conv_128->64(nearest_upsample_2x(d), padding 1)
       y = u + s                                     # 32x32, 64 channels
       loss = mean((y - target)^2)
       AdamW(lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01)

   gn8 = GroupNorm(8 groups, eps 1e-5, affine). 2 + 2 blocks, 16 GroupNorms, 11 convs.
   Times: forward (to the loss, graph recorded), backward (loss.backward() alone, after an
   untimed forward) and a full step (zero_grad, forward, backward, optimizer.step()).
"""

import json
import os
import statistics
import sys
import time
import warnings

# The venv has no numpy, which torch only needs for conversions this script never does.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "15"))


def median_ms(f, setup=None):
    # setup runs untimed before each call, so backward can be timed apart from its forward.
    times = []
    for i in range(RUNS + 1):  # first call is the warm-up
        arg = setup() if setup else None
        t = time.perf_counter()
        f(arg) if setup else f()
        if i:
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def conv_times(x, k):
    fwd = median_ms(lambda: F.conv2d(x, k, padding=1))
    step = median_ms(lambda: torch.autograd.grad(F.conv2d(x, k, padding=1).sum(), [x, k]))
    return fwd, step


def gn_times(x, gamma, beta):
    f = lambda: F.silu(F.group_norm(x, 8, gamma, beta, 1e-5))
    return median_ms(f), median_ms(lambda: torch.autograd.grad(f().sum(), [x, gamma, beta]))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(8, c), nn.Conv2d(c, c, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(8, c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        h = self.c1(F.silu(self.n1(x)))
        return x + self.c2(F.silu(self.n2(h)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.top = nn.Sequential(Block(64), Block(64))
        self.down = nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.mid = nn.Sequential(Block(128), Block(128))
        self.up = nn.Conv2d(128, 64, 3, padding=1)

    def forward(self, x):
        s = self.top(x)
        d = self.mid(self.down(s))
        return self.up(F.interpolate(d, scale_factor=2, mode="nearest")) + s


def net_times(x, target):
    net = Net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    loss = lambda: F.mse_loss(net(x), target)

    def step():
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()

    fwd = median_ms(loss)
    bwd = median_ms(lambda l: l.backward(), setup=lambda: (opt.zero_grad(set_to_none=True), loss())[1])
    params = sum(p.numel() for p in net.parameters())
    return fwd, bwd, median_ms(step), params


def main():
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    torch.manual_seed(0)
    n, c, h, w = 16, 64, 32, 32
    x = torch.randn(n, c, h, w, requires_grad=True)
    k = (torch.randn(c, c, 3, 3) * 0.05).requires_grad_()
    gamma, beta = torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True)
    cl = torch.channels_last
    x_cl = x.detach().to(memory_format=cl).requires_grad_()
    k_cl = k.detach().to(memory_format=cl).requires_grad_()

    as_json = "--json" in sys.argv[1:]
    rows = [
        ("conv3x3 NCHW", *conv_times(x, k)),
        ("conv3x3 channels_last", *conv_times(x_cl, k_cl)),
        ("GroupNorm(8)+SiLU NCHW", *gn_times(x, gamma, beta)),
        ("GroupNorm(8)+SiLU chan_last", *gn_times(x_cl, gamma, beta)),
    ]
    torch.manual_seed(0)
    xn, target = torch.randn(n, c, h, w), torch.randn(n, c, h, w)
    fwd, bwd, step, params = net_times(xn, target)
    if as_json:
        ops = {name: {"forward_ms": f, "forward_backward_ms": s} for name, f, s in rows}
        net = {"forward_ms": fwd, "backward_ms": bwd, "step_ms": step, "parameters": params}
        print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "ops": ops, "net": net}))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, f32, "
          f"{n}x{c}x{h}x{w}, median of {RUNS} after 1 warm-up")
    print(f"{'op':<30} {'forward ms':>11} {'fwd+bwd ms':>11}")
    for name, fwd_ms, step_ms in rows:
        print(f"{name:<30} {fwd_ms:>11.2f} {step_ms:>11.2f}")
    print(f"net: 2 blocks @32x32x64 + 2 blocks @16x16x128, {params} parameters, MSE + AdamW")
    print(f"{'forward ms':>11} {'backward ms':>12} {'full step ms':>13}")
    print(f"{fwd:>11.2f} {bwd:>12.2f} {step:>13.2f}")


if __name__ == "__main__":
    main()
