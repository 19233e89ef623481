"""Tests that see wrong training maths: each checks a piece against an independent computation, so that
changing the piece turns it red.

- noisy = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε with ᾱ computed here in float64 from the published betas (SD
  scaled-linear 0.00085..0.012, DiT linear 1e-4..0.02, 1000 steps) for each stage of each preset, and the
  loss is the MSE to ε (not to x0): read from the model's own inputs (a spy wraps the model) in two runs
  with the same random draws and targets x0 and 0;
- t uniform over 0..999 (chi-square on many draws), condition dropout at the configured rate (binomial
  bound), the motion stage sees the content frame the autoencoder made (through the real loop);
- sampling: an oracle ε-model (the exact noise of known targets) reaches the targets through
  ``CMDPipeline``'s DDIM loops in both stages, with the same schedules as training;
- the motion planes' axes, pinned with H' != W'.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from diffusers import UNet2DConditionModel
from scipy import stats

from cmdbench.cmd import presets
from cmdbench.cmd.autoencoder import CMDAutoencoder
from cmdbench.cmd.motion_dit import MotionDiT
from cmdbench.cmd.training import StageTrainer, TrainConfig, build_components, train
from cmdbench.data.latent_store import LatentBatch
from cmdbench.data.synthetic import moving_shape
from cmdbench.seeding import make_generators

# The published schedules, as the papers define them (float64 here; the code under test uses float32).
PUBLISHED_BETAS = {
    "sd": lambda: torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2,  # scaled-linear
    "dit": lambda: torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64),  # linear (DDPM / DiT)
}
# Which schedule each stage of each preset trains and samples with (presets.py: SD content models keep
# SD's schedule; every DiT uses DiT's).
EXPECTED_SCHEDULE = {
    ("cmd-tiny", "content"): "sd", ("cmd-tiny", "motion"): "dit",
    ("cmd-ucf101-64", "content"): "dit", ("cmd-ucf101-64", "motion"): "dit",
    ("cmd-webvid-512x1024", "content"): "sd", ("cmd-webvid-512x1024", "motion"): "dit",
}


def alphas_cumprod(kind: str) -> torch.Tensor:
    return torch.cumprod(1.0 - PUBLISHED_BETAS[kind](), dim=0)  # (1000,) float64


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


class Spy(torch.nn.Module):
    """Wraps the trained model: records the inputs and output of every call and passes them through
    (``call_through=False``: answers zeros in the model's output format, for tests of the random draws).
    ``module`` is the real model, so code that inspects the unwrapped model's type sees the real one."""

    def __init__(self, module: torch.nn.Module, call_through: bool = True):
        super().__init__()
        self.module = module
        self.call_through = call_through
        self.calls: list[SimpleNamespace] = []

    def forward(self, *args, **kwargs):
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        if self.call_through:
            out = self.module(*args, **kwargs)
        elif isinstance(self.module, UNet2DConditionModel):
            out = SimpleNamespace(sample=torch.zeros_like(sample))
        else:
            out = torch.zeros_like(sample) if isinstance(self.module, MotionDiT) else (torch.zeros_like(sample),)
        tensor = out.sample if hasattr(out, "sample") else (out[0] if isinstance(out, tuple) else out)
        content = args[2] if len(args) > 2 else kwargs.get("content")
        self.calls.append(SimpleNamespace(sample=sample.detach().double(), t=timestep.detach().long(),
                                          content=None if content is None else content.detach().double(),
                                          kwargs=kwargs, out=tensor.detach().double()))
        return out


def spied_trainer(preset: str, stage: str, call_through: bool = True, **kw) -> tuple[StageTrainer, Spy]:
    cfg = TrainConfig(stage=stage, output_dir="unused", preset=preset, tiny=preset != "cmd-tiny", **kw)
    trainer = StageTrainer(cfg, build_components(cfg), torch.device("cpu"))
    spy = Spy(trainer.trained, call_through)
    trainer.trained = spy
    return trainer, spy


def latent_batch(trainer: StageTrainer, n: int, seed: int = 0) -> LatentBatch:
    pipe, preset = trainer.pipe, trainer.preset
    content_shape, motion_shape = pipe.latent_shapes(preset.num_frames, preset.height, preset.width)
    g = torch.Generator().manual_seed(seed)
    content = torch.randn(n, *content_shape, generator=g) * 0.5 + 0.2
    motion = torch.rand(n, *motion_shape, generator=g) * 1.6 - 0.8  # tanh range
    conditions = (list(range(n)) if preset.conditioning == "class" else ["a red square moving"] * n)
    if preset.conditioning == "class":
        conditions = [c % preset.num_classes for c in conditions]
    ids = [f"clip{i}" for i in range(n)]
    return LatentBatch(content, motion, conditions, ids, ids, [None] * n)


# --- x_t, the schedule and the ε target ----------------------------------------------------------------


@pytest.mark.parametrize(("preset", "stage"), sorted(EXPECTED_SCHEDULE))
def test_noisy_input_follows_the_published_schedule_and_the_target_is_eps(preset, stage):
    trainer, spy = spied_trainer(preset, stage)
    batch = latent_batch(trainer, 64)
    target_name = "content" if stage == "content" else "motion"
    x0 = getattr(batch, target_name).double()
    zero = LatentBatch(**{**vars(batch), target_name: torch.zeros_like(getattr(batch, target_name))})
    torch.manual_seed(3)
    loss_x0 = trainer.loss(batch)
    torch.manual_seed(3)  # the same noise, timesteps and dropout: only x0 differs
    trainer.loss(zero)
    with_x0, with_zero = spy.calls
    assert torch.equal(with_x0.t, with_zero.t)
    t = with_x0.t
    abar = alphas_cumprod(EXPECTED_SCHEDULE[(preset, stage)])[t].view(-1, *[1] * (x0.ndim - 1))  # (B, 1, ...)
    # noisy(x0) - noisy(0) = sqrt(abar_t) x0: the schedule, read off the model's own inputs.
    torch.testing.assert_close(with_x0.sample - with_zero.sample, abar.sqrt() * x0, atol=2e-6, rtol=1e-5)
    eps = with_zero.sample / (1 - abar).sqrt()  # noisy(0) = sqrt(1 - abar_t) eps
    assert abs(eps.mean().item()) < 0.05 and abs(eps.std().item() - 1) < 0.05  # it is the N(0, I) draw
    c = x0.shape[1]
    expected = torch.mean((with_x0.out[:, :c] - eps) ** 2)  # the loss is the MSE to eps ...
    assert loss_x0.dtype == torch.float32
    assert loss_x0.item() == pytest.approx(expected.item(), rel=1e-5)
    wrong = torch.mean((with_x0.out[:, :c] - x0) ** 2)  # ... and not to x0
    assert abs(wrong.item() - expected.item()) > 1e-3 * expected.item()
    if stage == "motion":  # the clean content frame is the motion model's dense condition, unchanged
        torch.testing.assert_close(with_x0.content, batch.content.double(), atol=0, rtol=0)


def test_schedules_in_presets_are_the_published_ones():
    for kind, config in presets.SCHEDULES.items():
        betas = PUBLISHED_BETAS[kind]()
        assert config["num_train_timesteps"] == 1000 and config["prediction_type"] == "epsilon"
        assert (config["beta_start"], config["beta_end"]) == pytest.approx((betas[0].item(), betas[-1].item()))
        assert config["beta_schedule"] == {"sd": "scaled_linear", "dit": "linear"}[kind]


def test_timesteps_cover_0_to_999_uniformly():
    trainer, spy = spied_trainer("cmd-ucf101-64", "motion", call_through=False)
    batch = latent_batch(trainer, 2000)
    torch.manual_seed(0)
    for _ in range(10):
        trainer.loss(batch)
    t = torch.cat([c.t for c in spy.calls]).numpy()  # 20,000 draws
    assert t.min() >= 0 and t.max() <= 999
    assert t.min() < 10 and t.max() > 989
    counts = np.bincount(t // 50, minlength=20)  # 20 bins of 50 steps
    chi2 = stats.chisquare(counts).statistic
    assert chi2 < stats.chi2.isf(1e-6, df=19), counts  # uniform; t in 0..9 only gives chi2 ~ 380,000


def _binomial_bound(p: float, n: int) -> float:
    return 5 * math.sqrt(p * (1 - p) / n) + 1 / n  # 5 sigma


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_class_condition_dropout_at_the_configured_rate(rate):
    trainer, spy = spied_trainer("cmd-ucf101-64", "content", call_through=False, cond_dropout=rate)
    batch = latent_batch(trainer, 2000)
    torch.manual_seed(1)
    for _ in range(4):
        trainer.loss(batch)
    labels = torch.cat([c.kwargs["class_labels"] for c in spy.calls])
    given = torch.tensor(batch.conditions * 4)
    null = trainer.preset.num_classes
    dropped = labels == null
    assert torch.equal(labels[~dropped], given[~dropped])  # kept labels reach the model unchanged
    frac, n = dropped.float().mean().item(), labels.numel()
    assert abs(frac - rate) < _binomial_bound(rate, n), (frac, rate, n)


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_text_condition_dropout_is_the_empty_prompt_at_the_configured_rate(rate):
    trainer, spy = spied_trainer("cmd-tiny", "motion", call_through=False, cond_dropout=rate)
    batch = latent_batch(trainer, 800)
    torch.manual_seed(2)
    for _ in range(2):
        trainer.loss(batch)
    empty, empty_mask = trainer.pipe.encode_prompt_with_mask([""], torch.device("cpu"))
    caption, caption_mask = trainer.pipe.encode_prompt_with_mask([batch.conditions[0]], torch.device("cpu"))
    feats = torch.cat([c.kwargs["encoder_hidden_states"] for c in spy.calls])  # (N, S, E)
    masks = torch.cat([c.kwargs["encoder_attention_mask"] for c in spy.calls])  # (N, S)
    is_empty = (feats - empty).abs().amax(dim=(1, 2)) < 1e-5
    is_caption = (feats - caption).abs().amax(dim=(1, 2)) < 1e-5
    assert bool((is_empty ^ is_caption).all())  # every row is one of the two
    assert torch.equal(masks[is_empty], empty_mask.expand(int(is_empty.sum()), -1))  # masked mean per row
    assert torch.equal(masks[is_caption], caption_mask.expand(int(is_caption.sum()), -1))
    frac, n = is_empty.float().mean().item(), feats.shape[0]
    assert abs(frac - rate) < _binomial_bound(rate, n), (frac, rate, n)


# --- Through the training loop: what reaches the models ------------------------------------------------------


def test_the_loop_trains_each_diffusion_stage_on_the_autoencoders_latents(tmp_path, monkeypatch):
    """The real loop (in-memory clips -> frozen autoencoder -> stage): the motion DiT sees the content frame
    the autoencoder produced (not zeros), z_t follows DiT's schedule around the autoencoder's motion latent,
    and the reported loss is the MSE of the prediction to the noise."""
    encoded, motion_calls = [], []
    real_encode, real_forward = CMDAutoencoder.encode, MotionDiT.forward

    def encode(self, video):
        out = real_encode(self, video)
        encoded.append(tuple(o.detach().double() for o in out))
        return out

    def forward(self, sample, timestep, content, *args, **kwargs):
        out = real_forward(self, sample, timestep, content, *args, **kwargs)
        motion_calls.append(SimpleNamespace(sample=sample.detach().double(), t=timestep.detach().long(),
                                            content=content.detach().double(), out=out.detach().double()))
        return out

    monkeypatch.setattr(CMDAutoencoder, "encode", encode)
    monkeypatch.setattr(MotionDiT, "forward", forward)
    tiny = presets.TINY
    video, caption = moving_shape(0, num_frames=tiny.num_frames, height=tiny.height, width=tiny.width)
    losses: list[float] = []
    cfg = TrainConfig(stage="motion", output_dir=str(tmp_path / "m"), batch_size=8, max_steps=1, cond_dropout=0.0)
    train(cfg, [(video, caption)], on_step=lambda step, loss: losses.append(loss))
    (content, motion), = encoded
    call, = motion_calls
    assert call.content.abs().max() > 0.1
    torch.testing.assert_close(call.content, content, atol=0, rtol=0)
    abar = alphas_cumprod("dit")[call.t].view(-1, 1, 1, 1)
    # Every clip of the batch is the same video, so x0 is known: eps = (z_t - sqrt(abar) x0) / sqrt(1 - abar).
    eps = (call.sample - abar.sqrt() * motion) / (1 - abar).sqrt()
    assert abs(eps.std().item() - 1) < 0.1  # the N(0, I) draw (a wrong schedule or x0 leaves a residue)
    assert losses[0] == pytest.approx(torch.mean((call.out - eps) ** 2).item(), rel=1e-4)


# --- Sampling: an oracle reaches known targets with each stage's own schedule --------------------------------


def _oracle(targets: torch.Tensor, abar: torch.Tensor, calls: list, kind: str):
    """A forward that returns the exact noise of ``targets`` at x_t: eps = (x_t - sqrt(abar_t) x*) / sqrt(1 - abar_t)."""

    def forward(*args, **kwargs):
        x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        target = targets.repeat(x.shape[0] // targets.shape[0], *[1] * (targets.ndim - 1))  # [uncond; cond]
        a = abar[t.long().cpu()].view(-1, *[1] * (x.ndim - 1))
        eps = ((x.double() - a.sqrt() * target) / (1 - a).sqrt()).to(x.dtype)
        calls.append((x.detach().double(), t.detach().long().cpu()))
        if kind == "unet":
            return SimpleNamespace(sample=eps)
        return (eps,) if kind == "dit" else eps

    return forward


@pytest.mark.parametrize("name", ["cmd-tiny", "cmd-ucf101-64", "cmd-webvid-512x1024"])
def test_ddim_with_an_oracle_model_reaches_the_targets_in_both_stages(name):
    preset = presets.miniature(presets.PRESETS[name])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pipe = presets.build_pipeline(preset)
    content_shape, motion_shape = pipe.latent_shapes(preset.num_frames, preset.height, preset.width)
    g = torch.Generator().manual_seed(7)
    x_star = torch.randn(2, *content_shape, generator=g, dtype=torch.float64)
    z_star = torch.rand(2, *motion_shape, generator=g, dtype=torch.float64) * 1.6 - 0.8
    stages = {"content": (pipe.content_model, x_star), "motion": (pipe.motion_model, z_star)}
    calls: dict[str, list] = {"content": [], "motion": []}
    for stage, (model, target) in stages.items():
        kind = "motion" if stage == "motion" else ("unet" if preset.content.kind == "unet" else "dit")
        model.forward = _oracle(target, alphas_cumprod(EXPECTED_SCHEDULE[(name, stage)]), calls[stage], kind)
    cond = {"prompt": ["Fire", "Fire"]} if preset.conditioning == "text" else {"class_labels": [1, 2]}
    out = pipe(**cond, content_steps=6, motion_steps=9, guidance_scale=preset.guidance_scale,
               generator=make_generators([0, 1]), output_type="latent")
    assert len(calls["content"]) == 6 and len(calls["motion"]) == 9  # each stage ran its own step count
    for stage, result in (("content", out.content_frames), ("motion", out.motion_latents)):
        kind = EXPECTED_SCHEDULE[(name, stage)]
        abar = alphas_cumprod(kind)
        x_first, t_first = calls[stage][0]
        target = stages[stage][1]
        a1 = abar[t_first[:2]].view(-1, *[1] * (target.ndim - 1))
        eps = (x_first[:2] - a1.sqrt() * target) / (1 - a1).sqrt()  # DDIM with exact eps keeps it constant
        # The last DDIM step lands at alpha_bar = 1 (DiT: set_alpha_to_one) or alpha_bar_0 (SD's config).
        a_end = torch.tensor(1.0 if kind == "dit" else abar[0].item(), dtype=torch.float64)
        expected = a_end.sqrt() * target + (1 - a_end).sqrt() * eps
        torch.testing.assert_close(result.double(), expected, atol=2e-5, rtol=1e-5, msg=f"{name} {stage}")
        if kind == "dit":
            torch.testing.assert_close(result.double(), target, atol=2e-5, rtol=1e-5)


# --- The motion planes' axes (H' != W') ------------------------------------------------------------------


@pytest.fixture(scope="module")
def wide_autoencoder() -> CMDAutoencoder:
    """Frames 16 x 32, patch 4: H' = 4 rows, W' = 8 columns of tokens (the axes cannot be confused by shape)."""
    torch.manual_seed(0)
    return CMDAutoencoder(in_channels=3, num_frames=4, sample_size=(16, 32), patch_size=4, hidden_size=32, depth=1,
                          num_heads=2, head_dim=16, motion_channels=4).eval()


@pytest.mark.parametrize("axis", ["rows", "columns"])
def test_encoder_motion_planes_follow_their_axes(wide_autoencoder, axis):
    """Backbone features that vary only along one axis must show up in that axis' half of z: z = [z^x over
    H' (mean over W) ; z^y over W' (mean over H)] (Eq. 4)."""
    ae = wide_autoencoder
    h, w = ae.latent_hw
    assert (h, w) == (4, 8)
    g = torch.Generator().manual_seed(1)
    c = ae.config.hidden_size
    if axis == "rows":
        features = torch.randn(1, 4, h, 1, c, generator=g).expand(1, 4, h, w, c)  # varies along H' only
    else:
        features = torch.randn(1, 4, 1, w, c, generator=g).expand(1, 4, h, w, c)  # varies along W' only
    tokens = features.reshape(1, 4, h * w, c)
    handle = ae.encoder.register_forward_hook(lambda module, args, out: tokens)
    try:
        video = torch.rand(1, 3, 4, 16, 32) * 2 - 1  # a non-square clip
        _, z = ae.encode(video)  # (1, D, L, H' + W')
    finally:
        handle.remove()
    x_plane, y_plane = z[..., :h], z[..., h:]  # (1, D, L, H'), (1, D, L, W')
    varying, constant = (x_plane, y_plane) if axis == "rows" else (y_plane, x_plane)
    assert (constant - constant[..., :1]).abs().max() < 1e-6  # no structure along the other axis
    assert (varying - varying[..., :1]).abs().max() > 1e-2


@pytest.mark.parametrize("plane", ["x", "y"])
def test_decoder_motion_planes_follow_their_axes(wide_autoencoder, plane):
    """Changing z^x (the H' half) changes the decoder's tokens along rows only, identically for every column;
    z^y (the W' half) along columns only (Eq. 5)."""
    ae = wide_autoencoder
    h, w = ae.latent_hw
    seen: list[torch.Tensor] = []
    handle = ae.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        g = torch.Generator().manual_seed(2)
        content = torch.rand(1, 3, 16, 32, generator=g)
        z = torch.rand(1, 4, 4, h + w, generator=g) - 0.5
        dz = torch.zeros_like(z)
        if plane == "x":
            dz[..., :h] = torch.randn(1, 4, 4, h, generator=g)
        else:
            dz[..., h:] = torch.randn(1, 4, 4, w, generator=g)
        ae.decode(content, z)
        ae.decode(content, z + dz)
    finally:
        handle.remove()
    diff = (seen[1] - seen[0]).reshape(1, 4, h, w, -1)  # (1, L, H', W', C')
    along_rows = diff - diff[:, :, :, :1]  # zero when the change is the same for every column
    along_cols = diff - diff[:, :, :1]  # zero when the change is the same for every row
    same_everywhere, changing = (along_rows, along_cols) if plane == "x" else (along_cols, along_rows)
    assert same_everywhere.abs().max() < 1e-5
    assert changing.abs().max() > 1e-2
