"""Native pix2pixHD: the official parameter counts, shapes, losses, training on the real FUSeg wound
photos, resume after a kill, loading, generation, and `pipelines synth`."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipelines.core.errors import ConfigError, DataError, WeightsError
from pipelines.synthesis import (
    GlobalGenerator,
    LocalEnhancer,
    MultiscaleDiscriminator,
    Pix2PixHDSpec,
    VGGLoss,
    feature_matching_loss,
    generate,
    instance_edges,
    load_generator,
    lsgan_loss,
    mask_label_map,
    read_mask_pairs,
    train_pix2pixhd,
)
from pipelines.synthesis import train as synth_train
from pipelines.synthesis.pix2pixhd import init_weights
from tests.conftest import SHARED
from tests.test_cli import assert_one_line_error, run_cli

FIXTURES = SHARED / "fixtures"
FUSEG = SHARED / "data" / "fuseg2021" / "train"

BUILDERS = {
    "G_global_cityscapes": lambda: GlobalGenerator(36, 3, ngf=64, n_downsampling=4, n_blocks=9),
    "G_global_small": lambda: GlobalGenerator(3, 3, ngf=32, n_downsampling=3, n_blocks=6),
    "G_local_cityscapes": lambda: LocalEnhancer(36, 3, ngf=32, n_downsample_global=4, n_blocks_global=9,
                                                n_local_enhancers=1, n_blocks_local=3),
    "D_multiscale(input_nc=39,ndf=64,n_layers=3,num_D=2": lambda: MultiscaleDiscriminator(39, 64, 3, 2),
    "D_multiscale(input_nc=39,ndf=64,n_layers=3,num_D=3": lambda: MultiscaleDiscriminator(39, 64, 3, 3),
    "D_multiscale(input_nc=6,": lambda: MultiscaleDiscriminator(6, 64, 3, 2),
}


@pytest.mark.parametrize("prefix", list(BUILDERS))
def test_parameter_counts_equal_the_official_networks(prefix):
    path = FIXTURES / "reference_param_counts.json"
    if not path.is_file():
        pytest.skip(f"reference counts not found at {path}")
    counts = json.loads(path.read_text())["pix2pixhd"]
    (key,) = [k for k in counts if k.startswith(prefix)]
    with torch.device("meta"):  # counts without allocating 180M parameters
        model = BUILDERS[prefix]()
    assert sum(p.numel() for p in model.parameters()) == counts[key]


def test_forward_shapes():
    torch.manual_seed(0)
    g = GlobalGenerator(3, 3, ngf=8, n_downsampling=3, n_blocks=2)
    out = g(torch.rand(2, 3, 64, 96))
    assert out.shape == (2, 3, 64, 96) and out.abs().max() <= 1
    local = LocalEnhancer(2, 3, ngf=4, n_downsample_global=2, n_blocks_global=1, n_local_enhancers=2, n_blocks_local=1)
    assert local(torch.rand(1, 2, 64, 32)).shape == (1, 3, 64, 32)
    assert {k.split(".")[0] for k in local.state_dict()} == {"model", "model1_1", "model1_2", "model2_1", "model2_2"}
    d = MultiscaleDiscriminator(6, ndf=8, n_layers=3, num_D=3)
    features = d(torch.rand(2, 6, 64, 64))
    assert len(features) == 3 and all(len(scale) == 5 for scale in features)  # n_layers + 2 maps per scale
    assert [tuple(f.shape[1:]) for f in features[0]] == [(8, 33, 33), (16, 17, 17), (32, 9, 9), (64, 10, 10),
                                                         (1, 11, 11)]
    assert features[1][-1].shape[-1] == 7 and features[2][-1].shape[-1] == 5  # 32 px and 16 px inputs


def test_losses():
    real = [[torch.ones(1, 4, 3, 3), torch.ones(1, 1, 2, 2)] for _ in range(2)]
    fake = [[torch.zeros(1, 4, 3, 3), torch.zeros(1, 1, 2, 2)] for _ in range(2)]
    assert lsgan_loss(real, real=True) == 0 and lsgan_loss(fake, real=False) == 0
    assert lsgan_loss(fake, real=True) == 2  # summed over the two scales
    # one feature layer per scale: weight 4 / 1 per layer, 1 / 2 per scale, times lambda 10 -> L1 1 each -> 40
    assert feature_matching_loss(fake, real, 10.0).item() == pytest.approx(40.0)


def test_spec_checks_and_round_trip():
    spec = Pix2PixHDSpec(input_nc=3, ngf=8, n_downsampling=3, n_blocks=1, size=64, channels=["a", "b", "c"])
    assert Pix2PixHDSpec.from_json(spec.to_json()) == spec and spec.channels == ("a", "b", "c")
    with pytest.raises(ConfigError, match=r"size 100 is not a multiple of 16 \(.*\); use 96 or 112"):
        Pix2PixHDSpec(input_nc=2, n_downsampling=3, local_enhancer=True, size=100)
    with pytest.raises(ConfigError, match="ngf=0 must be an integer of at least 1"):
        Pix2PixHDSpec(input_nc=2, ngf=0)
    with pytest.raises(ConfigError, match="name every label-map channel"):
        Pix2PixHDSpec(input_nc=2, channels=("wound",))


def test_mask_label_maps_and_edges():
    mask = np.zeros((8, 8), bool)
    mask[1:3, 1:3] = True
    mask[5:7, 5:8] = True
    lm = mask_label_map(mask, edges=True)
    assert lm.shape == (3, 8, 8) and lm.dtype == np.float32
    assert (lm[0] + lm[1] == 1).all() and lm[1].sum() == mask.sum()
    assert lm[2][1, 1] == 1 and lm[2][0, 1] == 1 and lm[2][4, 4] == 0  # both sides of a boundary, not inside
    two = np.zeros((4, 4), int)
    two[:, 2:] = 1
    assert instance_edges(two)[:, 1:3].all() and not instance_edges(two)[:, [0, 3]].any()


def _tiny_pairs(n: int = 6, size: int = 32, seed: int = 0):
    """Dark discs on a gradient: a quick, learnable stand-in for the real photos."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    label_maps, images = [], []
    for _ in range(n):
        (cy, cx), r = rng.integers(8, size - 8, 2).tolist(), int(rng.integers(3, 7))
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        image = np.stack([xx * 4 + 60, yy * 4 + 60, np.full_like(xx, 120)], -1).astype(np.uint8)
        image[mask] = (150, 30, 30)
        label_maps.append(mask_label_map(mask))
        images.append(image)
    return label_maps, images


TINY = Pix2PixHDSpec(input_nc=2, ngf=4, n_downsampling=1, n_blocks=1, ndf=8, n_layers=2, size=32)


def test_resume_after_a_kill_continues_the_same_run(tmp_path, monkeypatch):
    label_maps, images = _tiny_pairs()
    opts = {"steps": 6, "batch_size": 2, "device": "cpu", "seed": 3, "sample_every": 2, "progress": False}
    straight = train_pix2pixhd(label_maps, images, TINY, tmp_path / "straight", **opts)

    calls = {"n": 0}
    real_step = synth_train._train_step

    def dies_at_step_5(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # killed mid-step 5; step 4 is the last checkpoint
        return real_step(*args, **kwargs)

    monkeypatch.setattr(synth_train, "_train_step", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_pix2pixhd(label_maps, images, TINY, tmp_path / "killed", **opts)
    assert pd.read_csv(tmp_path / "killed" / "history.csv")["step"].tolist() == [1, 2, 3, 4]
    monkeypatch.setattr(synth_train, "_train_step", real_step)
    resumed = train_pix2pixhd(label_maps, images, TINY, tmp_path / "killed", **opts)

    assert resumed["step"].tolist() == [1, 2, 3, 4, 5, 6]
    cols = ["loss_G_GAN", "loss_G_feat", "loss_D_real", "loss_D_fake", "l1"]
    np.testing.assert_allclose(resumed[cols].to_numpy(), straight[cols].to_numpy(), rtol=1e-4, atol=1e-6)
    g_straight, _ = load_generator(tmp_path / "straight" / "generator.safetensors")
    g_resumed, _ = load_generator(tmp_path / "killed")
    for a, b in zip(g_straight.state_dict().values(), g_resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert pd.read_csv(tmp_path / "killed" / "history.csv")["step"].tolist() == [1, 2, 3, 4, 5, 6]

    longer = train_pix2pixhd(label_maps, images, TINY, tmp_path / "killed", **{**opts, "steps": 8})
    assert longer["step"].tolist() == list(range(1, 9))
    other = Pix2PixHDSpec(**{**json.loads(TINY.to_json()), "ngf": 8})
    with pytest.raises(ConfigError, match=r"other settings: ngf 4 \(now 8\)"):
        train_pix2pixhd(label_maps, images, other, tmp_path / "killed", **opts)


def test_load_generator_and_generate(tmp_path):
    label_maps, images = _tiny_pairs(3)
    history = train_pix2pixhd(label_maps, images, TINY, tmp_path, epochs=1, batch_size=2, device="cpu",
                              progress=False)
    assert history["step"].tolist() == [1, 2]  # one pass over 3 pairs in batches of 2
    generator, spec = load_generator(tmp_path / "generator.safetensors")
    assert spec == TINY and not generator.training
    out = generate(generator, np.stack(label_maps), device="cpu", batch_size=2)
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
    assert generate(generator, torch.zeros(0, 2, 32, 32), device="cpu").shape == (0, 32, 32, 3)
    with pytest.raises(ConfigError, match=r"pass \(N, 2, H, W\)"):
        generate(generator, torch.zeros(1, 3, 32, 32), device="cpu")
    with pytest.raises(ConfigError, match="multiples of 2"):
        generate(generator, torch.zeros(1, 2, 33, 32), device="cpu")
    with pytest.raises(ConfigError, match="not found"):
        load_generator(tmp_path / "nothing.safetensors")
    from pipelines.backbones import save_weights

    save_weights(GlobalGenerator(2, 3, 4, 1, 1), tmp_path / "plain.safetensors")
    with pytest.raises(ConfigError, match="is not a pix2pixHD generator"):
        load_generator(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="is not a safetensors file"):
        load_generator(tmp_path / "junk.safetensors")
    with pytest.raises(DataError, match="2 label maps for 3 images"):
        train_pix2pixhd(label_maps[:2], images, TINY, tmp_path / "x", steps=1, device="cpu", progress=False)


def test_vgg_loss_from_a_local_file_only(tmp_path):
    from torchvision.models import vgg19

    from pipelines.backbones import save_weights

    torch.manual_seed(0)
    with torch.device("meta"):  # shapes only; random values stand in for ImageNet weights
        shapes = {k: v.shape for k, v in vgg19().features.state_dict().items()}
    state = {f"features.{k}": torch.randn(shape) * 0.05 for k, shape in shapes.items()}
    save_weights(state, tmp_path / "vgg.safetensors")
    loss = VGGLoss(tmp_path / "vgg.safetensors")
    a, b = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    assert loss(a, a).item() == 0 and loss(a, b).item() > 0
    save_weights({"0.weight": torch.zeros(3)}, tmp_path / "bad.safetensors")
    with pytest.raises(WeightsError, match="is not torchvision's VGG19"):
        VGGLoss(tmp_path / "bad.safetensors")
    label_maps, images = _tiny_pairs(2)
    history = train_pix2pixhd(label_maps, images, TINY, tmp_path / "run", steps=2, batch_size=2, device="cpu",
                              vgg_weights=tmp_path / "vgg.safetensors", progress=False)
    assert history["loss_G_VGG"].gt(0).all()


# ------------------------------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def fuseg():
    if not (FUSEG / "images").is_dir():
        pytest.skip(f"FUSeg 2021 sample not found at {FUSEG}")
    return read_mask_pairs(FUSEG / "images", FUSEG / "labels", size=64)


def test_reads_the_real_fuseg_pairs(fuseg):
    label_maps, images, stems = fuseg
    assert len(stems) == 50 and stems[0] == "0011"
    assert label_maps[0].shape == (2, 64, 64) and images[0].shape == (64, 64, 3) and images[0].dtype == np.uint8
    wound = np.mean([lm[1].mean() for lm in label_maps])
    assert 0.002 < wound < 0.05  # ulcers are small; an inverted or empty mask reading would fail


def test_trains_on_the_real_fuseg_pairs(fuseg, tmp_path):
    label_maps, images, _ = fuseg
    spec = Pix2PixHDSpec(input_nc=2, ngf=16, n_downsampling=3, n_blocks=2, ndf=16, size=64)
    history = train_pix2pixhd(label_maps, images, spec, tmp_path, steps=60, batch_size=4, device="cpu", seed=0,
                              sample_every=30, progress=False)
    assert list(history.columns[:6]) == ["step", "loss_G_GAN", "loss_G_feat", "loss_D_real", "loss_D_fake", "l1"]
    first, last = history.head(10).mean(), history.tail(10).mean()
    assert last["l1"] < 0.8 * first["l1"], (first["l1"], last["l1"])  # generated photos approach the real ones
    assert last["loss_G_feat"] < 0.85 * first["loss_G_feat"], (first["loss_G_feat"], last["loss_G_feat"])
    for name in ("step_00000.png", "step_00030.png", "step_00060.png", "final.png"):
        assert (tmp_path / "samples" / name).is_file()
    assert Image.open(tmp_path / "samples" / "final.png").size == (3 * 64 + 4, 4 * 64 + 6)  # 4 rows of 3

    # the trained generator is much closer to the photos than the same network untrained
    masks = torch.from_numpy(np.stack(label_maps))
    real = np.stack(images)
    generator, _ = load_generator(tmp_path)
    fake = generate(generator, masks, device="cpu")
    torch.manual_seed(0)
    untrained = spec.build_generator()
    init_weights(untrained)
    before = generate(untrained, masks, device="cpu")
    l1 = {name: np.abs(x.astype(float) - real).mean() for name, x in (("trained", fake), ("untrained", before))}
    assert l1["trained"] < 0.7 * l1["untrained"], l1
    # and the discriminator learned the right way round: real pairs score higher than generated ones
    # (fails if the real/fake targets or the two optimisers were swapped)
    d = spec.build_discriminator()
    state = torch.load(tmp_path / "last_state.pt", weights_only=True)["model"]  # the runner's state schema
    d.load_state_dict({k.removeprefix("discriminator."): v for k, v in state.items() if k.startswith("discriminator.")})
    with torch.no_grad():
        scores = {name: np.mean([s[-1].mean().item() for s in d(torch.cat([masks, torch.from_numpy(x).permute(
            0, 3, 1, 2).float() / 127.5 - 1], 1))]) for name, x in (("real", real), ("generated", fake))}
    assert scores["real"] > scores["generated"] + 0.05, scores


# ------------------------------------------------------------------------------------------------- command line
def _write_pairs(root, n=3, size=32, mask_scale=255, rgb=True):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    label_maps, images = _tiny_pairs(n, size)
    for i, (lm, im) in enumerate(zip(label_maps, images, strict=True)):
        Image.fromarray(im).save(root / "images" / f"{i:04d}.png")
        mask = (lm[1] * mask_scale).astype(np.uint8)
        Image.fromarray(np.repeat(mask[..., None], 3, 2) if rgb else mask).save(root / "masks" / f"{i:04d}.png")
    return root


def test_synth_command_trains_and_resumes(capsys, caplog, tmp_path):
    caplog.set_level(logging.INFO)
    root = _write_pairs(tmp_path, mask_scale=1, rgb=False)
    argv = ["synth", "--images", str(root / "images"), "--masks", str(root / "masks"), "--output",
            str(tmp_path / "out"), "--size", "32", "--ngf", "4", "--n-downsampling", "1", "--n-blocks", "1",
            "--batch-size", "2", "--sample-every", "2", "--device", "cpu", "--edges"]
    code, out, err = run_cli(capsys, *argv, "--steps", "3")
    assert code == 0, err
    err += caplog.text
    caplog.clear()
    assert out.strip().splitlines()[-1] == str((tmp_path / "out").resolve())
    assert "mean of the first vs last" in err and "samples/final.png" in err
    for name in ("generator.safetensors", "history.csv", "last_state.pt", "samples/final.png",
                 "samples/step_00002.png"):
        assert (tmp_path / "out" / name).is_file(), name
    _, spec = load_generator(tmp_path / "out")
    assert spec.channels == ("background", "wound", "edges") and spec.input_nc == 3
    code, out, err = run_cli(capsys, *argv, "--steps", "5")
    assert code == 0, err
    err += caplog.text
    assert "resuming" in err and "from its checkpoint at step 3 of 5" in err
    assert pd.read_csv(tmp_path / "out" / "history.csv")["step"].tolist() == [1, 2, 3, 4, 5]


def test_synth_output_is_a_run_folder_whose_config_runs_again(capsys, tmp_path):
    import yaml

    root = _write_pairs(tmp_path)
    out = tmp_path / "out"
    argv = ["synth", "--images", str(root / "images"), "--masks", str(root / "masks"), "--output", str(out),
            "--size", "32", "--ngf", "4", "--n-downsampling", "1", "--n-blocks", "1", "--device", "cpu"]
    code, _, err = run_cli(capsys, *argv, "--steps", "1", "--set", "batch_size=3")
    assert code == 0, err
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["steps"] == 1 and cfg["batch_size"] == 3 and cfg["images"] == str(root / "images")
    assert json.loads((out / "environment.json").read_text())["device"] == "cpu"
    pairs = pd.read_csv(out / "split.csv")
    assert pairs["stem"].tolist() == [0, 1, 2] and set(pairs["split"]) == {"train"}
    assert all(p.endswith(".png") for p in [*pairs["image"], *pairs["mask"]])
    code, _, err = run_cli(capsys, *argv, "--config", str(out / "config.yaml"), "--set", "steps=2")
    assert code == 0, err  # its own config.yaml is a valid --config: the same settings, continued
    assert pd.read_csv(out / "history.csv")["step"].tolist() == [1, 2]


def test_synth_command_one_line_errors(capsys, tmp_path):
    root = _write_pairs(tmp_path)
    base = ["synth", "--images", str(root / "images"), "--masks", str(root / "masks"), "--output",
            str(tmp_path / "out"), "--size", "32", "--ngf", "4", "--n-downsampling", "1", "--n-blocks", "1",
            "--steps", "1", "--device", "cpu"]

    def fails(match, *extra):
        code, _, err = run_cli(capsys, *base, *extra)
        assert_one_line_error(code, err, match)

    fails("size 31 is not a multiple of 2 (2**downsamplings of this generator); use 30 or 32", "--size", "31")
    fails("--vgg-weights nowhere.pt not found", "--vgg-weights", "nowhere.pt")
    (root / "masks" / "0002.png").rename(root / "masks" / "0002_mask.png")
    fails("0002.png has no mask named 0002.* in")
    (root / "masks" / "0002_mask.png").rename(root / "masks" / "0002.png")
    (root / "masks" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    fails("0001.png is not an image file")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "masks" / "0001.png")
    fails("is 16x16 but image")
    fails("images folder", "--images", str(tmp_path / "missing"))
    assert not (tmp_path / "out").exists()
