"""The pipeline contract: serialisation round trips, seeding, min distance, Scene helpers, validation."""

from dataclasses import dataclass

import pytest
import torch

from napari_deeptrack.sim import (
    Choice,
    IntUniform,
    Normal,
    Optics,
    Particles,
    Pipeline,
    Scatterer,
    Scene,
    SimBatch,
    Transform,
    Uniform,
    from_dict,
    from_json,
    register,
    to_dict,
    to_json,
    to_python,
)
from napari_deeptrack.sim.augment import Affine, ElasticDeformation, FlipRotate
from napari_deeptrack.sim.targets import (
    ClassLabel,
    Counts,
    DensityMap,
    DiskMask,
    InstanceLabels,
    RegressionVector,
    ZBinnedVolume,
)


@register
@dataclass
class SpotsForPipelineTests(Optics):
    """Test-only optics: a Gaussian spot per present particle, width growing with |z|."""

    sigma_px: float = 1.2

    def render(self, scene, scatterers, generator):
        h, w = scene.image_shape
        yy = torch.arange(h, dtype=torch.float32)[:, None]
        xx = torch.arange(w, dtype=torch.float32)[None, :]
        y, x = scene.position[..., 0, None, None], scene.position[..., 1, None, None]
        s2 = (self.sigma_px**2 + scene.position[..., 2, None, None] ** 2)
        spots = torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * s2))
        return ((scene.intensity * scene.present)[..., None, None] * spots).sum(dim=1, keepdim=True)


@register
@dataclass
class BeadForPipelineTests(Scatterer):
    """Test-only scatterer with a radius."""

    radius_um: float | Uniform = 0.3

    def sample_into(self, scene, slots, generator):
        from napari_deeptrack.sim import sample

        scene.radius_um[:, slots] = sample(self.radius_um, scene.radius_um[:, slots].shape, generator)


@register
@dataclass
class ShotNoiseForPipelineTests(Transform):
    """Test-only transform: Poisson noise drawn from the pipeline's generator."""

    def __call__(self, batch, generator):
        return SimBatch(torch.poisson(batch.image, generator=generator), batch.scene, batch.targets)


def full_pipeline(**changes):
    kwargs = dict(
        image_shape=(48, 40),
        particles=[
            Particles(BeadForPipelineTests(Uniform(0.2, 0.4)), count=IntUniform(2, 6),
                      intensity=Uniform(50, 80), margin_px=3.0),
            Particles(BeadForPipelineTests(0.5), count=IntUniform(0, 3), z_um=Normal(0.0, 0.5, -1.0, 1.0),
                      intensity=Choice([40.0, 60.0]), margin_px=-2.0, class_id=1),
        ],
        optics=SpotsForPipelineTests(1.3),
        transforms=[FlipRotate(), Affine(translate_px=Uniform(-1, 1)), ElasticDeformation(0.5, 8.0),
                    ShotNoiseForPipelineTests()],
        targets={
            "mask": DiskMask(3.0),
            "density": DensityMap(2.0),
            "volume": ZBinnedVolume(-1.0, 1.0, 4, 2.0),
            "labels": InstanceLabels(0.1),
            "xy": RegressionVector(["y", "x", "z_um"]),
            "cls": ClassLabel(),
            "n": Counts(),
        },
        min_distance_px=5.0,
    )
    kwargs.update(changes)
    return Pipeline(**kwargs)


def assert_same_batch(a, b):
    assert torch.equal(a.image, b.image)
    assert torch.equal(a.scene.position, b.scene.position) and torch.equal(a.scene.present, b.scene.present)
    assert a.targets.keys() == b.targets.keys()
    for k in a.targets:
        assert torch.equal(a.targets[k].nan_to_num(-9), b.targets[k].nan_to_num(-9)), k


def test_full_pipeline_shapes():
    batch = full_pipeline()(5, seed=0)
    assert batch.image.shape == (5, 1, 48, 40)
    t = batch.targets
    assert t["mask"].shape == (5, 1, 48, 40) and t["volume"].shape == (5, 4, 48, 40)
    assert t["labels"].dtype == torch.int64 and t["xy"].shape == (5, 3) and t["cls"].shape == (5,)
    assert torch.equal(t["n"], Counts()(batch.scene))  # recomputed after augmentation
    assert {"rot90_k", "affine_rotation_deg", "elastic_alpha_px"} <= set(batch.scene.image_params)
    assert batch.scene.n_max == 6 + 3


def test_round_trip_json_and_python_script():
    pipe = full_pipeline()
    text = to_json(pipe)
    back = from_json(text)
    assert to_dict(back) == to_dict(pipe)
    assert isinstance(back.image_shape, tuple)
    assert_same_batch(back(3, seed=11), pipe(3, seed=11))
    script = to_python(pipe)
    ns: dict = {}
    exec(script, ns)
    assert to_dict(ns["pipeline"]) == to_dict(pipe)
    assert_same_batch(ns["pipeline"](3, seed=11), pipe(3, seed=11))
    # loading never executes code: unknown types are refused with a clear message
    bad = to_dict(pipe)
    bad["optics"]["type"] = "os.system"
    with pytest.raises(ValueError, match="unknown object type"):
        from_dict(bad)


def test_same_seed_same_batch_different_seed_different_batch():
    pipe = full_pipeline()
    a, b, c = pipe(4, seed=3), pipe(4, seed=3), pipe(4, seed=4)
    assert_same_batch(a, b)
    assert not torch.equal(a.image, c.image)
    assert not torch.equal(a.scene.position, c.scene.position)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert_same_batch(pipe(2, generator=g1), pipe(2, generator=g2))


def test_min_distance_is_respected():
    pipe = full_pipeline(transforms=[], min_distance_px=7.0)
    scene = pipe.sample_scene(64, torch.Generator().manual_seed(0))
    yx = scene.position[..., :2]
    d = torch.cdist(yx, yx)
    both = scene.present[:, :, None] & scene.present[:, None, :]
    off_diag = ~torch.eye(scene.n_max, dtype=torch.bool)[None]
    assert d[both & off_diag].min() >= 7.0
    # without the constraint close pairs do occur (so the check above is meaningful)
    loose = full_pipeline(transforms=[], min_distance_px=0.0)
    loose = loose.sample_scene(64, torch.Generator().manual_seed(0))
    d2 = torch.cdist(loose.position[..., :2], loose.position[..., :2])
    both2 = loose.present[:, :, None] & loose.present[:, None, :]
    assert d2[both2 & off_diag].min() < 7.0
    # redrawn particles keep their population's position distribution (here a vertical strip)
    strip = Pipeline((64, 64), [Particles(BeadForPipelineTests(), count=8, x_px=Uniform(30.0, 34.0))],
                     SpotsForPipelineTests(), min_distance_px=3.0)
    s = strip.sample_scene(16, torch.Generator().manual_seed(2))
    x = s.position[..., 1][s.present]
    assert x.min() >= 30.0 and x.max() <= 34.0
    # a crowded image cannot hold them all: particles are dropped, never left too close
    crowded = Pipeline((12, 12), [Particles(BeadForPipelineTests(), count=20)], SpotsForPipelineTests(),
                       min_distance_px=5.0)
    s = crowded.sample_scene(8, torch.Generator().manual_seed(1))
    d3 = torch.cdist(s.position[..., :2], s.position[..., :2])
    both3 = s.present[:, :, None] & s.present[:, None, :]
    assert d3[both3 & ~torch.eye(20, dtype=torch.bool)[None]].min() >= 5.0
    assert s.counts().max() < 20


def test_scene_concatenate_pad_to_and_records():
    pipe = full_pipeline(transforms=[])
    a = pipe.sample_scene(2, torch.Generator().manual_seed(0))
    small = Pipeline((48, 40), [Particles(BeadForPipelineTests(), count=2)], SpotsForPipelineTests())
    b = small.sample_scene(3, torch.Generator().manual_seed(1))
    a.attributes["tag"] = torch.ones(2, a.n_max)
    b.attributes["tag"] = 2 * torch.ones(3, b.n_max)
    b.image_params["level"] = torch.arange(3.0)
    c = Scene.concatenate([a, b])
    assert c.batch_size == 5 and c.n_max == a.n_max == 9
    assert not c.present[2:, 2:].any()
    assert torch.equal(c.position[:2], a.position) and torch.equal(c.position[2:, :2], b.position)
    assert (c.refractive_index[2:, 2:] == 1).all()
    assert c.attributes["tag"].shape == (5, 9) and "level" not in c.image_params
    p = b.pad_to(5)
    assert p.n_max == 5 and torch.equal(p.position[:, :2], b.position) and not p.present[:, 2:].any()
    assert b.pad_to(2) is b
    with pytest.raises(ValueError, match="pad"):
        a.pad_to(1)
    with pytest.raises(ValueError):
        Scene.concatenate([])
    with pytest.raises(ValueError, match="image_shape"):
        Scene.concatenate([a, Scene.empty(1, 2, (10, 10))])
    rec = c.to_records()
    assert len(rec) == int(c.present.sum())
    first = rec[0]
    bi, ni = torch.nonzero(c.present)[0].tolist()
    assert first["image"] == bi and first["x"] == pytest.approx(float(c.position[bi, ni, 1]))
    assert first["radius_um"] == pytest.approx(float(c.radius_um[bi, ni])) and "tag" in first
    idx = c.index(slice(1, 3))
    assert idx.batch_size == 2 and torch.equal(idx.position, c.position[1:3])


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="image_shape"):
        full_pipeline(image_shape=(0, 10))
    with pytest.raises(ValueError, match="image_shape"):
        full_pipeline(image_shape=(10,))
    with pytest.raises(ValueError, match="image_shape"):
        full_pipeline(image_shape=(4, 5, 6))
    with pytest.raises(ValueError, match="batch_size"):
        full_pipeline()(0, seed=0)
    with pytest.raises(ValueError, match="count"):
        Particles(BeadForPipelineTests(), count=-1)
    with pytest.raises(ValueError, match="intensity"):
        Particles(BeadForPipelineTests(), intensity=Uniform(-5, 5))
    with pytest.raises(ValueError, match="unknown field"):
        from_json('{"type": "DiskMask", "radius": 3}')


def test_full_pipeline_with_real_fluorescence_round_trips():
    from napari_deeptrack.sim import Background, PointParticle, Poisson, Sphere
    from napari_deeptrack.sim.optics.fluorescence import Fluorescence

    pipe = Pipeline(
        image_shape=(32, 32),
        particles=[
            Particles(PointParticle(), count=IntUniform(1, 4), intensity=Uniform(200, 400), margin_px=2),
            Particles(Sphere(radius_um=Uniform(0.1, 0.2), refractive_index=1.5), count=2, class_id=1),
        ],
        optics=Fluorescence(NA=1.2, wavelength_um=0.6, pixel_size_um=0.1),
        transforms=[FlipRotate(), Background(5.0), Poisson()],
        targets={"mask": DiskMask(2.0), "density": DensityMap(1.5)},
        min_distance_px=4.0,
    )
    back = from_json(to_json(pipe))
    assert to_dict(back) == to_dict(pipe)
    ns: dict = {}
    exec(to_python(pipe), ns)
    assert to_dict(ns["pipeline"]) == to_dict(pipe)
    a, b = pipe(2, seed=1), ns["pipeline"](2, seed=1)
    assert_same_batch(a, b)
    assert a.image.shape == (2, 1, 32, 32) and a.image.min() >= 0
