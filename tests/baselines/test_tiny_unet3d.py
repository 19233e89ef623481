"""tiny-unet3d specifics beyond the contract: checkpoints, guidance, cost stages, meta device."""

from __future__ import annotations

import pytest
import torch

from cmdbench.interfaces import GeneratorSpec, UnsupportedSettingError
from cmdbench.registry import GENERATORS, load_plugins
from cmdbench.seeding import make_generators

load_plugins()
SMALL = {"num_frames": 2, "height": 8, "width": 8, "steps": 1}


def build(name="tiny-unet3d", **spec):
    return GENERATORS.get(name)(GeneratorSpec(tiny=True, **spec))


def test_random_weights_are_the_same_model_on_every_build():
    a, b = build(), build()
    for (na, pa), (_, pb) in zip(a.unet.state_dict().items(), b.unet.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), na
    full = GENERATORS.get("tiny-unet3d")(GeneratorSpec(tiny=False))  # the reference miniature: same model
    assert torch.equal(next(iter(full.unet.parameters())), next(iter(a.unet.parameters())))


@pytest.mark.parametrize("name", ["tiny-unet3d", "tiny-unet3d-class"])
def test_checkpoint_round_trip(tmp_path, name):
    gen = build(name)
    with torch.no_grad():  # perturb so a loader that silently re-initialises would be caught
        for p in gen.unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    gen.save_pretrained(tmp_path / "ckpt")
    loaded = GENERATORS.get(name)(GeneratorSpec(checkpoint=str(tmp_path / "ckpt")))
    cond = {"prompts": ["a red car"]} if gen.conditioning == "text" else {"labels": [3]}
    a = gen.sample(**cond, **SMALL, guidance_scale=2.0, generator=make_generators([5]))
    b = loaded.sample(**cond, **SMALL, guidance_scale=2.0, generator=make_generators([5]))
    assert torch.equal(a, b)


def test_bad_checkpoint_names_what_is_missing(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks \\['scheduler', 'text_encoder'\\]"):
        GENERATORS.get("tiny-unet3d")(GeneratorSpec(checkpoint=str(tmp_path)))


def test_guidance_and_prompt_change_the_output():
    gen = build()
    base = gen.sample(prompts=["a red car"], **SMALL, guidance_scale=1.0, generator=make_generators([0]))
    guided = gen.sample(prompts=["a red car"], **SMALL, guidance_scale=7.5, generator=make_generators([0]))
    other = gen.sample(prompts=["a blue boat"], **SMALL, guidance_scale=7.5, generator=make_generators([0]))
    assert not torch.equal(base, guided) and not torch.equal(guided, other)


def test_odd_size_and_guidance_below_one_are_unsupported():
    gen = build()
    with pytest.raises(UnsupportedSettingError, match="multiple of 2"):
        gen.sample(prompts=["a"], **{**SMALL, "height": 9}, generator=make_generators([0]))
    with pytest.raises(UnsupportedSettingError, match=">= 1.0"):
        gen.sample(prompts=["a"], **SMALL, guidance_scale=0.5, generator=make_generators([0]))


def test_cost_stages_run_and_count_calls():
    gen = build()
    stages = {s.name: s for s in gen.cost_stages(num_frames=2, height=8, width=8, steps=3)}
    assert stages["denoiser"].calls == 3 and stages["denoiser"].guidance_passes == 2
    assert stages["text_encoder"].paper_convention is False
    with torch.no_grad():
        out = stages["denoiser"].module(**stages["denoiser"].make_inputs(2)).sample
        states = stages["text_encoder"].module(**stages["text_encoder"].make_inputs(2)).last_hidden_state
    assert out.shape == (2, 3, 2, 8, 8) and states.shape == (2, 77, 32)


def test_meta_device_build_has_no_storage():
    gen = GENERATORS.get("tiny-unet3d")(GeneratorSpec(device="meta"))
    assert next(gen.unet.parameters()).is_meta
    stage = gen.cost_stages(num_frames=8, height=16, width=16, steps=4)[1]
    assert stage.make_inputs(1)["sample"].is_meta
