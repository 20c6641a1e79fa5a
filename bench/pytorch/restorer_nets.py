"""PyTorch counterpart of our two learned restorer networks, timing one training step of each
for bench/benches/train_ops.rs.

The networks are re-written here from the Rust sources, which are the spec (same layers, same
parameter names and shapes, same forward arithmetic), not taken from StableSR:
  - src/pixel_restorer.rs: `FastRestorer` (the structure encoder at timestep 0; its feature map
    of the input's width W goes through the head GroupNorm32 + SiLU, conv3x3, SiLU, conv3x3 to
    4 channels, added to `cell_means(input, factor)`) and `DiffusionRestorer::predict` (the
    encoder on `input` at float timesteps t, then the UNet on cat([x_t, base], 1) at t, no text
    context, SPADE reading the encoder's features). The diffusion model's frozen `base` fast
    model is not built: its prediction `base` is an input, so only `encoder.*` and `unet.*`
    are trainable, as in train_ops.rs.
  - src/stablesr/struct_encoder.rs (EncoderUNetModelWT), src/stablesr/unet.rs
    (UNetModelDualcondV2) and src/stablesr/layers.rs (the blocks).
Sizes come from checkpoints/pixel-restorer-fast/config.json and
checkpoints/pixel-restorer/config.json. Parameters keep PyTorch's default init (train_ops.rs
builds ours on a fresh VarMap, all zeros): timing does not depend on the values. In the fast
net the encoder's layers past its finest tapped map (the downsampling, the deeper level, the
middle block, fea_tran.1) run forward but do not reach the output: they get no gradient and
AdamW skips them, here as in ours.

Measured like train_ops.py: CPU, f32, NCHW, median of BENCH_RUNS runs (default 15) after one
warm-up, on BENCH_THREADS threads (default 2). Shapes are the training command's defaults
(batch 16, patches of 16x16 art pixels, factor 4), all tensors N(0, 1) after
torch.manual_seed(0), none requiring grad:
  fast:      input (16, C, 16, 16) with C the config's encoder.in_channels (64, or 68 with
             fitted cells, whose last 4 channels are then the residual's anchor),
             target (16, 4, 16, 16);
             loss = mse(net(input), target)
  diffusion: input (16, C, 16, 16), x_t, base and target (16, 4, 16, 16), t = 16 float
             timesteps uniform in [0, 1000); loss = mse(predict(x_t, t, input, base), target)
For each net: forward_ms (to the loss, graph recorded), backward_ms (loss.backward() alone,
after zero_grad(set_to_none=True) and an untimed forward), step_ms (zero_grad, forward,
backward, AdamW step with lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01) and
parameters (the count of trainable parameters, which train_ops.rs checks against its own).

    restorer_nets.py            a readable table
    restorer_nets.py --json     one JSON object on stdout (train_ops.rs runs it this way, with
                                BENCH_THREADS and BENCH_RUNS set, and prints both sides):
        {"torch": ..., "threads": N, "runs": RUNS, "nets": {"fast": {"forward_ms": ...,
         "backward_ms": ..., "step_ms": ..., "parameters": ...}, "diffusion": {...}}}
    restorer_nets.py --check-manifest FAST_FILE DIFFUSION_FILE
                                compares the nets' named_parameters with manifests written
                                from the Rust side (one `name [d0, d1, ...]` a line; the
                                diffusion one without `base.*`) and exits 1 on any difference.
"""

import argparse
import json
import math
import os
import sys
import warnings

# The venv has no numpy, which torch only needs for conversions this script never does.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# The same timing as train_ops.py, beside this script (python puts the script's folder on
# sys.path): median of RUNS after one warm-up.
from train_ops import RUNS, median_ms  # noqa: E402

CHECKPOINTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "checkpoints")

# The constants of src/stablesr/layers.rs.
GN32_GROUPS, GN32_EPS = 32, 1e-5  # GroupNorm32 (`normalization()` in openaimodel)
TRANSFORMER_NORM_EPS = 1e-6  # the spatial transformer's Normalize (32 groups)
SPADE_HIDDEN = 128
TIMESTEP_MAX_PERIOD = 10000.0

BATCH, CELLS = 16, 16


# ---- ops (layers.rs `ops`) ----------------------------------------------------------------


def timestep_embedding(t, dim):
    """(B,) -> (B, dim): [cos(t f_i), sin(t f_i)], f_i = exp(-ln(10000) i / (dim / 2)) in f32,
    zero-padded when dim is odd."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -math.log(TIMESTEP_MAX_PERIOD) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return torch.cat([emb, torch.zeros(len(t), 1)], dim=1) if dim % 2 else emb


def attention(q, k, v, scale):
    """softmax(q k^T * scale) v for q (N, Tq, d), k and v (N, Tk, d)."""
    return torch.softmax(q @ k.transpose(1, 2) * scale, dim=-1) @ v


def attention_heads(channels, num_heads, num_head_channels):
    """(heads, head width): a fixed width when num_head_channels is set, else num_heads heads."""
    if num_head_channels:
        heads, width = channels // num_head_channels, num_head_channels
    elif num_heads:
        heads, width = num_heads, channels // num_heads
    else:
        raise SystemExit("set num_heads or num_head_channels in the config")
    if heads == 0 or heads * width != channels:
        raise SystemExit(f"{channels} channels do not split into heads ({num_heads}, {num_head_channels})")
    return heads, width


def unset_negative(value):
    """A head-count setting where StableSR writes -1 (or null) for "not set"."""
    return value if value is not None and value > 0 else None


def conv3x3(c_in, c_out, stride=1):
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)


def group_norm32(channels):
    return nn.GroupNorm(GN32_GROUPS, channels, eps=GN32_EPS)


# ---- blocks (layers.rs) -------------------------------------------------------------------


class TimeEmbed(nn.Sequential):
    """`time_embed.0`, SiLU, `time_embed.2` on the sinusoidal embedding: (B,) -> (B, 4 mc)."""

    def __init__(self, model_channels):
        super().__init__(nn.Linear(model_channels, 4 * model_channels), nn.SiLU(),
                         nn.Linear(4 * model_channels, 4 * model_channels))
        self.model_channels = model_channels

    def forward(self, t):
        return super().forward(timestep_embedding(t, self.model_channels))


class ResBlock(nn.Module):
    """openaimodel's ResBlock (layers.rs ResBlock / ResBlockCore): in_layers (GroupNorm32, SiLU,
    conv3x3), plus emb_layers (SiLU, linear) per channel, out_layers (norm, SiLU, conv3x3; the
    dropout at index 2 is left out as in the Rust), plus the skip (1x1 conv when the channel
    count changes). out_layers.0 has 32 groups, or one per channel when out_channels is not a
    multiple of 32, unless `out_groups` says otherwise."""

    def __init__(self, channels, emb_channels, out_channels, out_groups=None):
        super().__init__()
        if out_groups is None:
            out_groups = GN32_GROUPS if out_channels % GN32_GROUPS == 0 else out_channels
        self.in_layers = nn.Sequential(group_norm32(channels), nn.SiLU(), conv3x3(channels, out_channels))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.ModuleDict({
            "0": nn.GroupNorm(out_groups, out_channels, eps=GN32_EPS),
            "3": conv3x3(out_channels, out_channels),
        })
        self.skip_connection = nn.Conv2d(channels, out_channels, 1) if out_channels != channels else None

    def residual(self, x, emb):
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.out_layers["3"](F.silu(self.out_layers["0"](h)))

    def skip(self, x):
        return x if self.skip_connection is None else self.skip_connection(x)

    def forward(self, x, emb):
        return self.skip(x) + self.residual(x, emb)


class Spade(nn.Module):
    """GroupNorm32 of x, times (1 + gamma) plus beta, both predicted by 3x3 convs from the
    structure feature map of x's width (through a shared conv3x3 + ReLU of 128 channels)."""

    def __init__(self, norm_channels, label_channels):
        super().__init__()
        self.param_free_norm = group_norm32(norm_channels)
        self.mlp_shared = nn.Sequential(conv3x3(label_channels, SPADE_HIDDEN), nn.ReLU())
        self.mlp_gamma = conv3x3(SPADE_HIDDEN, norm_channels)
        self.mlp_beta = conv3x3(SPADE_HIDDEN, norm_channels)

    def forward(self, x, features):
        actv = self.mlp_shared(features[x.shape[3]])
        return self.param_free_norm(x) * (self.mlp_gamma(actv) + 1.0) + self.mlp_beta(actv)


class ResBlockDual(ResBlock):
    """StableSR's ResBlockDual: the ResBlock's residual branch (out_layers.0 always 32 groups)
    modulated by SPADE, plus the skip."""

    def __init__(self, channels, emb_channels, semb_channels, out_channels):
        super().__init__(channels, emb_channels, out_channels, GN32_GROUPS)
        self.spade = Spade(out_channels, semb_channels)

    def forward(self, x, emb, features):
        return self.skip(x) + self.spade(self.residual(x, emb), features)


class AttentionBlock(nn.Module):
    """openaimodel's AttentionBlock with the legacy QKV order: qkv (a kernel-1 Conv1d) of the
    GroupNorm32'd (B, C, HW) map is split into heads first, then each head's 3 x width channels
    into q, k, v; softmax attention with scale 1/sqrt(width) on the scores; proj_out; plus x."""

    def __init__(self, channels, num_heads):
        super().__init__()
        self.norm = group_norm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        self.num_heads = num_heads

    def forward(self, x):
        b, c, height, width = x.shape
        x = x.reshape(b, c, height * width)
        head_width = c // self.num_heads
        per_head = self.qkv(self.norm(x)).reshape(b * self.num_heads, 3 * head_width, height * width)
        q, k, v = (part.transpose(1, 2) for part in per_head.split(head_width, dim=1))
        h = attention(q, k, v, 1.0 / math.sqrt(head_width)).transpose(1, 2).reshape(b, c, height * width)
        return (x + self.proj_out(h)).reshape(b, c, height, width)


class CrossAttention(nn.Module):
    """LDM's CrossAttention without a context (the configs have no text): multi-head attention
    of x to itself; to_q, to_k, to_v without bias, to_out.0 with."""

    def __init__(self, dim, heads, head_width):
        super().__init__()
        inner = heads * head_width
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim))
        self.heads, self.head_width = heads, head_width

    def split_heads(self, t):
        # (B, N, heads * width) -> (B * heads, N, width)
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.head_width).transpose(1, 2).reshape(b * self.heads, n, self.head_width)

    def forward(self, x):
        q, k, v = self.split_heads(self.to_q(x)), self.split_heads(self.to_k(x)), self.split_heads(self.to_v(x))
        out = attention(q, k, v, 1.0 / math.sqrt(self.head_width))
        b, n, _ = x.shape
        out = out.reshape(b, self.heads, n, self.head_width).transpose(1, 2).reshape(b, n, self.heads * self.head_width)
        return self.to_out(out)


class GEGLU(nn.Module):
    """`proj` to 2 x inner; the first half (value) times gelu_erf of the second (gate)."""

    def __init__(self, dim, inner):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x):
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU at `net.0` to 4 x dim, then the linear `net.2` back to dim."""

    def __init__(self, dim):
        super().__init__()
        self.net = nn.ModuleDict({"0": GEGLU(dim, 4 * dim), "2": nn.Linear(4 * dim, dim)})

    def forward(self, x):
        return self.net["2"](self.net["0"](x))


class BasicTransformerBlock(nn.Module):
    """Pre-norm (LayerNorm, eps 1e-5) self-attention, "cross"-attention (to itself, no
    context) and feed-forward, each added to its input."""

    def __init__(self, dim, heads, head_width):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, head_width)
        self.attn2 = CrossAttention(dim, heads, head_width)
        self.ff = FeedForward(dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x)) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """SpatialTransformerV2 with linear projections: GroupNorm (32 groups, eps 1e-6), the H*W
    tokens through proj_in, the transformer blocks and proj_out, back to a map, plus x."""

    def __init__(self, channels, heads, head_width, depth):
        super().__init__()
        inner = heads * head_width
        self.norm = nn.GroupNorm(GN32_GROUPS, channels, eps=TRANSFORMER_NORM_EPS)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(BasicTransformerBlock(inner, heads, head_width) for _ in range(depth))
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x):
        b, c, height, width = x.shape
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        for block in self.transformer_blocks:
            tokens = block(tokens)
        return self.proj_out(tokens).transpose(1, 2).reshape(b, c, height, width) + x


class Downsample(nn.Module):
    """conv3x3 stride 2, padding 1, at `op`."""

    def __init__(self, channels, out_channels):
        super().__init__()
        self.op = conv3x3(channels, out_channels, stride=2)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    """Nearest 2x, then conv3x3 at `conv`."""

    def __init__(self, channels, out_channels):
        super().__init__()
        self.conv = conv3x3(channels, out_channels)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepSequential(nn.ModuleList):
    """A TimestepEmbedSequential: its layers in order, each given what it needs."""

    def forward(self, h, emb, features=None):
        for layer in self:
            if isinstance(layer, ResBlockDual):
                h = layer(h, emb, features)
            elif isinstance(layer, ResBlock):
                h = layer(h, emb)
            else:
                h = layer(h)
        return h


# ---- networks (struct_encoder.rs, unet.rs, pixel_restorer.rs) -------------------------------


class StructEncoder(nn.Module):
    """The time-aware structure encoder: the input conv, per level num_res_blocks ResBlocks
    (each followed by an AttentionBlock at the attention resolutions) and a Downsample between
    levels, the middle block (ResBlock, AttentionBlock, ResBlock), and one `fea_tran` ResBlock
    per tapped map (the input of each Downsample, then the middle block's output). Returns the
    transformed maps keyed by width."""

    def __init__(self, cfg):
        super().__init__()
        if cfg.get("use_new_attention_order", False):
            raise SystemExit("structure encoder: only the legacy QKV order is implemented")
        mc = cfg["model_channels"]
        emb_channels = 4 * mc
        num_heads = unset_negative(cfg.get("num_heads", 1))
        num_head_channels = unset_negative(cfg.get("num_head_channels"))

        def attention_block(ch):
            return AttentionBlock(ch, attention_heads(ch, num_heads, num_head_channels)[0])

        self.time_embed = TimeEmbed(mc)
        self.input_blocks = nn.ModuleList([TimestepSequential([conv3x3(cfg["in_channels"], mc)])])
        tapped_channels, ch, ds = [], mc, 1
        for level, mult in enumerate(cfg["channel_mult"]):
            for _ in range(cfg["num_res_blocks"]):
                layers = [ResBlock(ch, emb_channels, mult * mc)]
                ch = mult * mc
                if ds in cfg["attention_resolutions"]:
                    layers.append(attention_block(ch))
                self.input_blocks.append(TimestepSequential(layers))
            if level + 1 != len(cfg["channel_mult"]):
                self.input_blocks.append(TimestepSequential([Downsample(ch, ch)]))
                tapped_channels.append(ch)
                ds *= 2
        self.middle_block = TimestepSequential([
            ResBlock(ch, emb_channels, ch), attention_block(ch), ResBlock(ch, emb_channels, ch)])
        tapped_channels.append(ch)
        self.fea_tran = nn.ModuleList(ResBlock(c, emb_channels, cfg["out_channels"]) for c in tapped_channels)

    def forward(self, x, t):
        emb = self.time_embed(t)
        tapped, h = [], x
        for block in self.input_blocks:
            if len(block) == 1 and isinstance(block[0], Downsample):
                tapped.append(h)
            h = block(h, emb)
        tapped.append(self.middle_block(h, emb))
        features = (transform(m, emb) for m, transform in zip(tapped, self.fea_tran))
        return {f.shape[3]: f for f in features}


class UNet(nn.Module):
    """UNetModelDualcondV2 without text: ResBlockDuals (SPADE from the structure features),
    SpatialTransformers at the attention resolutions and in the middle, skip connections
    concatenated on the way up, then GroupNorm32 + SiLU and conv3x3 (`out.0`, `out.2`)."""

    def __init__(self, cfg):
        super().__init__()
        if cfg.get("context_dim") is not None:
            raise SystemExit("UNet: a text context (context_dim) is not part of this benchmark")
        if not cfg.get("use_linear_in_transformer", False):
            raise SystemExit("UNet: only the linear transformer projections are implemented")
        mc = cfg["model_channels"]
        emb_channels = 4 * mc
        num_heads = unset_negative(cfg.get("num_heads"))
        num_head_channels = unset_negative(cfg.get("num_head_channels"))
        depth = cfg.get("transformer_depth", 1)

        def res_block(ch, out_ch):
            return ResBlockDual(ch, emb_channels, cfg["semb_channels"], out_ch)

        def transformer(ch):
            return SpatialTransformer(ch, *attention_heads(ch, num_heads, num_head_channels), depth)

        self.time_embed = TimeEmbed(mc)
        self.input_blocks = nn.ModuleList([TimestepSequential([conv3x3(cfg["in_channels"], mc)])])
        skip_channels, ch, ds = [mc], mc, 1
        for level, mult in enumerate(cfg["channel_mult"]):
            for _ in range(cfg["num_res_blocks"]):
                layers = [res_block(ch, mult * mc)]
                ch = mult * mc
                if ds in cfg["attention_resolutions"]:
                    layers.append(transformer(ch))
                self.input_blocks.append(TimestepSequential(layers))
                skip_channels.append(ch)
            if level + 1 != len(cfg["channel_mult"]):
                self.input_blocks.append(TimestepSequential([Downsample(ch, ch)]))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = TimestepSequential([res_block(ch, ch), transformer(ch), res_block(ch, ch)])
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg["channel_mult"]))):
            for i in range(cfg["num_res_blocks"] + 1):
                layers = [res_block(ch + skip_channels.pop(), mult * mc)]
                ch = mult * mc
                if ds in cfg["attention_resolutions"]:
                    layers.append(transformer(ch))
                if level > 0 and i == cfg["num_res_blocks"]:
                    layers.append(Upsample(ch, ch))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(layers))
        self.out = nn.Sequential(group_norm32(ch), nn.SiLU(), conv3x3(mc, cfg["out_channels"]))

    def forward(self, x, t, features):
        emb = self.time_embed(t)
        skips, h = [], x
        for block in self.input_blocks:
            h = block(h, emb, features)
            skips.append(h)
        h = self.middle_block(h, emb, features)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, features)
        return self.out(h)


def cell_means(x, factor):
    """The mean over each cell's factor² sub-pixels: (B, 4 f², H, W) -> (B, 4, H, W)."""
    b, c, h, w = x.shape
    ff = factor * factor
    return x.reshape(b, c // ff, ff, h, w).mean(2)


class FastRestorer(nn.Module):
    """The structure encoder at timestep 0 and the head (`head.norm`, `head.hidden`,
    `head.out`) on its feature map of the input's width, added to the cells' mean colour."""

    def __init__(self, cfg):
        super().__init__()
        self.encoder = StructEncoder(cfg["encoder"])
        c, hc = cfg["encoder"]["out_channels"], cfg.get("head_channels", 64)
        self.head = nn.ModuleDict({"norm": group_norm32(c), "hidden": conv3x3(c, hc), "out": conv3x3(hc, 4)})
        self.factor = cfg["factor"]
        self.fitted_cells = cfg.get("fitted_cells", False)

    def forward(self, x):
        b, _, _, w = x.shape
        finest = self.encoder(x, torch.zeros(b))[w]
        h = self.head["hidden"](F.silu(self.head["norm"](finest)))
        ff = self.factor * self.factor
        anchor = x[:, 4 * ff:4 * ff + 4] if self.fitted_cells else cell_means(x[:, :4 * ff], self.factor)
        return anchor + self.head["out"](F.silu(h))


class DiffusionRestorer(nn.Module):
    """The diffusion model's trainable network, `DiffusionRestorer::predict` with a base: the
    encoder on the input at t, the UNet on the noisy state beside the base prediction at t."""

    def __init__(self, cfg):
        super().__init__()
        self.encoder = StructEncoder(cfg["encoder"])
        self.unet = UNet(cfg["unet"])

    def forward(self, x_t, t, x, base):
        t = t.float()
        return self.unet(torch.cat([x_t, base], dim=1), t, self.encoder(x, t))


def load_config(name):
    with open(os.path.join(CHECKPOINTS, name, "config.json")) as f:
        return json.load(f)


def build_nets():
    torch.manual_seed(0)
    configs = {"fast": load_config("pixel-restorer-fast"), "diffusion": load_config("pixel-restorer")}
    nets = {"fast": FastRestorer(configs["fast"]), "diffusion": DiffusionRestorer(configs["diffusion"])}
    return nets, {name: cfg["encoder"]["in_channels"] for name, cfg in configs.items()}


# ---- modes --------------------------------------------------------------------------------


def read_manifest(path):
    """`name [d0, d1, ...]` per line -> {name: (d0, d1, ...)}."""
    manifest = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                name, shape = line.strip().split(" ", 1)
                manifest[name] = tuple(int(d) for d in shape.strip("[]").split(",") if d.strip())
    return manifest


def check_manifests(fast_file, diffusion_file):
    nets, _ = build_nets()
    ok = True
    for (name, net), path in zip(nets.items(), (fast_file, diffusion_file)):
        want = read_manifest(path)
        have = {k: tuple(p.shape) for k, p in net.named_parameters()}
        missing = sorted(want.keys() - have.keys())
        extra = sorted(have.keys() - want.keys())
        wrong = sorted(k for k in want.keys() & have.keys() if want[k] != have[k])
        for k in missing:
            print(f"{name}: missing here: {k} {list(want[k])}")
        for k in extra:
            print(f"{name}: not in {path}: {k} {list(have[k])}")
        for k in wrong:
            print(f"{name}: {k} has shape {list(have[k])} here, {list(want[k])} in {path}")
        if missing or extra or wrong:
            ok = False
        else:
            print(f"{name}: the {len(have)} tensors ({sum(p.numel() for p in net.parameters())} parameters) match {path}")
    sys.exit(0 if ok else 1)


def training_times(net, loss):
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()

    return {
        "forward_ms": median_ms(loss),
        "backward_ms": median_ms(lambda l: l.backward(), setup=lambda: (opt.zero_grad(set_to_none=True), loss())[1]),
        "step_ms": median_ms(step),
        "parameters": sum(p.numel() for p in net.parameters()),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--check-manifest", nargs=2, metavar=("FAST_FILE", "DIFFUSION_FILE"),
                        help="compare the parameters with manifests from the Rust side")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    if args.check_manifest:
        check_manifests(*args.check_manifest)

    nets, in_channels = build_nets()
    n = BATCH
    torch.manual_seed(0)
    x = {name: torch.randn(n, c, CELLS, CELLS) for name, c in in_channels.items()}
    x_t, base, target = (torch.randn(n, 4, CELLS, CELLS) for _ in range(3))
    t = torch.rand(n) * 1000.0
    fast = training_times(nets["fast"], lambda: F.mse_loss(nets["fast"](x["fast"]), target))
    diffusion = training_times(nets["diffusion"], lambda: F.mse_loss(nets["diffusion"](x_t, t, x["diffusion"], base), target))

    results = {"fast": fast, "diffusion": diffusion}
    if args.json:
        print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "runs": RUNS, "nets": results}))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, f32, batch {n} of "
          f"{CELLS}x{CELLS} cells, median of {RUNS} after 1 warm-up, MSE + AdamW")
    print(f"{'net':<10} {'parameters':>11} {'forward ms':>11} {'backward ms':>12} {'full step ms':>13}")
    for name, r in results.items():
        print(f"{name:<10} {r['parameters']:>11} {r['forward_ms']:>11.2f} {r['backward_ms']:>12.2f} {r['step_ms']:>13.2f}")


if __name__ == "__main__":
    main()
