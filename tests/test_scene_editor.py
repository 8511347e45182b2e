"""The Scenes tab: the editor's geometry, and the service's scene passes against rvt.groundtruth computed
directly on the checkpoint (the Python API)."""
import numpy as np
import pytest
import torch

from lens.service import LIVE_SCENE_METHODS, LensService, UserError
from lens.tabs.scenes import VIEWS, clicked_point, moved, render, scores_table
from rvt import load_checkpoint
from rvt.assets import BUNDLED_CHECKPOINT, SCENE_CHECKPOINTS
from rvt.groundtruth import TEST_SEED, accuracy, head_object_mass, relevance_maps, score_scene
from rvt.scenes import LABELS, Scene, make_scenes, random_spec, scene_seed, scene_tensors
from viz.scenes import head_mass_image, relevance_image, scene_image

ROTARY, NOPOS = "rotary + conv queries", "no position"


@pytest.fixture(scope="module")
def service():
    service = LensService(load_checkpoint(BUNDLED_CHECKPOINT, "cpu"))
    yield service
    service.close()


@pytest.fixture(scope="module")
def spec():
    return random_spec(scene_seed(TEST_SEED, 0), label=LABELS[0])  # red left of blue


def test_moving_red_across_blue_changes_the_label(spec):
    assert spec.label == "red left of blue"
    right = moved(spec, "red", spec.blue.x + 12, spec.blue.y)
    below = moved(spec, "red", spec.blue.x, spec.blue.y + 12)
    assert (right.label, below.label) == ("red right of blue", "red below blue")
    assert moved(spec, "red", -50, 99).red.x == 0 and moved(spec, "red", -50, 99).red.y == spec.height  # clipped
    assert right.blue == spec.blue and right.distractors == spec.distractors
    with pytest.raises(UserError, match="only the red and blue"):
        moved(spec, "distractor 0", 1, 1)


@pytest.mark.parametrize("view", list(VIEWS))
def test_a_click_lands_where_it_was_made(spec, view):
    """The centre of the shown image is the centre of the edited canvas in every view (extend centres it);
    a corner is a corner of the rendered canvas."""
    scene, _ = render(spec, view)
    width, height = scene_image(scene.image, scene.masks).size
    assert clicked_point(spec, view, [width / 2, height / 2]) == pytest.approx((spec.width / 2, spec.height / 2))
    x, y = clicked_point(spec, view, [0, 0])
    extended = VIEWS[view][1] is not None
    assert (x, y) == pytest.approx((-spec.width / 2, -spec.height / 2) if extended else (0, 0))
    for outside in ([width, 0], [-1, 3], [1e9, 1e9], "x", [1]):
        with pytest.raises(UserError, match="inside the"):
            clicked_point(spec, view, outside)


def test_views_render_natively(spec):
    zoom, _ = render(spec, "zoom 2x (64x64)")
    extend, offset = render(spec, "extend 2x (64x64)")
    assert zoom.image.shape == extend.image.shape == (64, 64, 3)
    assert offset == (16.0, 16.0) and extend.label == zoom.label == spec.label
    # extend keeps the objects' pixel size; zoom doubles it
    assert extend.masks["red"].sum() == pytest.approx(Scene.from_spec(spec).masks["red"].sum(), rel=0.05)
    assert zoom.masks["red"].sum() > 2.5 * Scene.from_spec(spec).masks["red"].sum()  # 4x the area, edges aside


def test_scene_pass_equals_the_python_api(service, spec):
    """The tab's prediction and live scores equal load_checkpoint + the scene tensors + rvt.groundtruth."""
    scene = Scene.from_spec(spec)
    for name in (ROTARY, NOPOS):
        result = service.analyze_scene(name, scene)
        bundle = load_checkpoint(SCENE_CHECKPOINTS[name], "cpu")
        images, _ = scene_tensors([scene], bundle.labels)
        with torch.no_grad():
            probs = bundle.model(bundle.preprocess.normalize(images.float() / 255)).softmax(-1)[0]
        assert torch.allclose(result.analysis.probs, probs, atol=1e-5), name
        maps = relevance_maps(bundle, [scene], LIVE_SCENE_METHODS, targets=probs.argmax()[None])[0]
        for method in LIVE_SCENE_METHODS:
            assert np.allclose(result.maps[method], maps[method], atol=1e-6), (name, method)
            assert result.scores[method] == pytest.approx(score_scene(maps[method], scene)), (name, method)
    with pytest.raises(UserError, match="unknown scene model"):
        service.analyze_scene("mine", scene)


def test_the_rotary_model_reads_an_edit_and_the_blind_one_cannot(service, spec):
    """Swapping the red and blue objects' places flips the rotary model's answer; the no-position model's
    answer cannot depend on where the objects are, so it stays near chance."""
    flipped = moved(moved(spec, "red", spec.blue.x, spec.blue.y), "blue", spec.red.x, spec.red.y)
    assert flipped.label == "red right of blue"
    for edited in (spec, flipped):
        result = service.analyze_scene(ROTARY, Scene.from_spec(edited))
        assert result.analysis.labels[int(result.analysis.probs.argmax())] == edited.label
    blind = service.analyze_scene(NOPOS, Scene.from_spec(spec)).analysis.probs
    assert float(blind.max()) < 0.5  # measured 0.25-0.26


def test_every_method_and_heads_with_a_job(service, spec):
    sid = service.open_session()
    scene = Scene.from_spec(spec)
    scores = service.score_scene_methods(sid, ROTARY, scene)
    live = service.analyze_scene(ROTARY, scene).scores
    for method in LIVE_SCENE_METHODS:
        assert scores[method] == pytest.approx(live[method])  # the same maps either way
    share = float((scene.masks["red"] | scene.masks["blue"]).mean())
    assert scores["uniform map"] == pytest.approx({"mass": share, "rank": share})
    assert "**" in scores_table(scores)  # the best real method is marked

    found = service.scene_heads(sid, ROTARY, count=40, k=2)
    bundle = load_checkpoint(SCENE_CHECKPOINTS[ROTARY], "cpu")
    scenes = make_scenes(40, TEST_SEED)
    direct = head_object_mass(bundle, scenes)
    assert np.allclose(found.mass["patches"], direct["patches"], atol=1e-6)
    assert found.silencing["patches"]["all heads"] == pytest.approx(accuracy(bundle, scenes))
    assert service.scene_heads(sid, ROTARY, count=40, k=2) is found  # cached: the same for everyone
    assert head_mass_image(found.mass["cls"], float(found.mass["uniform"]), "t").size[0] > 200


def test_pictures_mark_the_key_objects(spec):
    scene = Scene.from_spec(spec)
    plain, outlined = (np.asarray(scene_image(scene.image, scene.masks, show)) for show in (False, True))
    assert plain.shape == outlined.shape and plain.shape[0] >= 256
    changed = (plain != outlined).any(-1)
    assert changed.any() and changed.mean() < 0.1  # outlines only
    relevance = np.zeros((8, 8))
    relevance[0, 0] = 1.0
    heat = np.asarray(relevance_image(scene.image, relevance, scene.masks, show_masks=False))
    assert heat[:32, :32].mean() > heat[-32:, -32:].mean()  # the relevant patch is the bright one
