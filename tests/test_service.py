"""The explorer's service without a server: sessions, passes, jobs and limits, in milliseconds."""
import re
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import small_config
from lens.service import Cancelled, LensService, RandomSpec, ServerLimits, SessionExpired, UserError
from rvt import Preprocess, RvT, load_checkpoint, save_checkpoint
from rvt.faithfulness import FaithfulnessConfig, clear_caches, scorecard
from rvt.preprocess import ImageInputError, read_image


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    save_checkpoint(path, RvT(**small_config(depth=3, heads=2)), [f"class {i}" for i in range(10)], Preprocess())
    return path


@pytest.fixture(scope="module")
def garment(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "garment.png"
    arr = np.zeros((40, 30), np.uint8)
    arr[5:35, 6:24] = np.random.default_rng(0).integers(90, 250, (30, 18))
    Image.fromarray(arr).save(path)
    return path


def make(checkpoint, **limits) -> LensService:
    return LensService(load_checkpoint(checkpoint, "cpu"), ServerLimits(**limits))


def test_analysis_equals_the_python_api(checkpoint, garment):
    service = make(checkpoint)
    sid = service.open_session()
    analysis = service.analyze(sid, garment)
    bundle = load_checkpoint(checkpoint, "cpu")
    with torch.no_grad():
        expected = bundle.model(bundle.preprocess(read_image(garment))[None]).softmax(-1)[0]
    assert torch.allclose(analysis.probs, expected, atol=1e-6)
    assert service.passes == 1


def test_a_refused_upload_leaves_nothing_stale(checkpoint, garment, tmp_path):
    service = make(checkpoint)
    sid = service.open_session()
    service.analyze(sid, garment)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageInputError):
        service.analyze(sid, tmp_path / "bad.png")
    assert not service.has_analysis(sid)
    with pytest.raises(UserError, match="Upload an image"):
        service.export(sid)


def test_passes_never_touch_the_shared_model(checkpoint, garment):
    """A what-if silencing every head, run in parallel with plain analyses, changes nobody else's result."""
    service = make(checkpoint)
    shared = service.bundled.bundle.model
    observer, meddler = service.open_session(), service.open_session()
    expected = service.analyze(observer, garment).probs
    service.analyze(meddler, garment)
    slow = shared.register_forward_pre_hook(lambda *a: time.sleep(0.02))  # copied into every replica
    seen, errors = [], []

    def meddle():
        try:
            for _ in range(5):
                service.whatif(meddler, {layer: [0, 1] for layer in range(3)}, [0, 1, 2])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    try:
        thread = threading.Thread(target=meddle)
        thread.start()
        for _ in range(5):
            seen.append(service.analyze(observer, garment).probs)
        thread.join()
    finally:
        slow.remove()
    assert not errors
    assert all(torch.equal(p, expected) for p in seen)
    blocks = [layer[0] for layer in shared.transformer.layers]
    assert all(b.fused for b in blocks) and not any(b._forward_hooks or b.attend._forward_hooks for b in blocks)


def test_random_model_is_seeded_without_touching_the_global_rng(checkpoint):
    service = make(checkpoint)
    sid = service.open_session()
    state = torch.get_rng_state()
    first = service.random_model(sid, RandomSpec(seed=3)).model.state_dict()
    second = service.random_model(sid, RandomSpec(seed=3)).model.state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = service.random_model(sid, RandomSpec(seed=4)).model.state_dict()
    assert not torch.equal(first["cls_token"], other["cls_token"])
    with pytest.raises(UserError, match="dim=1000"):
        service.random_model(sid, RandomSpec(dim=1000))


def test_sessions_expire_and_free_their_analysis(checkpoint, garment):
    service = make(checkpoint, session_ttl=0.05)
    sid = service.open_session()
    service.analyze(sid, garment)
    time.sleep(0.1)
    service.sweep()
    assert service.live_sessions == 0
    with pytest.raises(SessionExpired, match="was freed"):
        service.current(sid)


def test_a_job_longer_than_the_ttl_leaves_its_session_a_full_ttl_to_deliver(checkpoint, garment):
    """An export outlasting the TTL must not have its file swept away before Gradio picks it up."""
    service = make(checkpoint, session_ttl=0.3)
    sid = service.open_session()
    service.analyze(sid, garment)
    with service.job(sid):
        time.sleep(0.5)  # the job runs past the TTL: a running job's session is never swept
        service.sweep()
        assert service.is_live(sid)
    service.sweep()  # the job just ended: its result is on its way to the visitor
    assert service.is_live(sid)
    time.sleep(0.4)
    service.sweep()
    assert not service.is_live(sid)


def test_total_memory_cap_evicts_the_least_recently_used(checkpoint, garment):
    service = make(checkpoint)
    first = service.open_session()
    one = service.analyze(first, garment)
    size = service.session(first).nbytes
    assert size > 0 and one is not None
    need = service.pass_bytes(service.bundled.bundle, (28, 28))  # a pass's reservation, counted in the same cap
    service = make(checkpoint, total_bytes=int(size * 2.5) + need)
    sids = [service.open_session() for _ in range(4)]
    for sid in sids[:3]:
        service.analyze(sid, garment)
    assert all(service.has_analysis(sid) for sid in sids[:3])  # 3 analyses fit once no pass runs
    service.analyze(sids[3], garment)  # its pass needs room: the least recently used analysis goes first
    held = [service.session(sid).analysis is not None for sid in sids]
    assert held == [False, True, True, True]
    passes = service.passes
    again = service.current(sids[0])  # its visitor comes back: the analysis runs again, once
    assert service.passes == passes + 1 and torch.equal(again.probs, one.probs)
    assert service.current(sids[0]) is again and service.passes == passes + 1


def test_a_pass_waits_for_room_and_one_alone_always_runs(checkpoint):
    """Cached analyses and running passes share `total_bytes`: a pass that does not fit beside the running
    ones waits until one ends (or gives up with a busy message), and a pass with none running starts."""
    service = make(checkpoint, total_bytes=100, job_timeout=1.0)
    pool, entered, leave = service.bundled, threading.Event(), threading.Event()

    def hold():
        with service.borrow(pool, need=80):
            entered.set()
            leave.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert entered.wait(10)
    with pytest.raises(UserError, match="busy"), service.borrow(pool, need=30):
        pass
    waited = []

    def second():
        start = time.monotonic()
        with service.borrow(pool, need=30):
            waited.append(time.monotonic() - start)

    late = threading.Thread(target=second)
    late.start()
    time.sleep(0.1)
    assert not waited  # still waiting for room
    leave.set()
    holder.join()
    late.join()
    assert waited and waited[0] >= 0.1
    with service.borrow(pool, need=500):  # over the total, but alone: it runs
        assert service.passes == 3


def test_sizes_are_bounded_by_the_server_not_the_model(checkpoint, garment):
    service = make(checkpoint, max_side=64)
    sid = service.open_session()
    with pytest.raises(UserError, match="between 4 and 64"):
        service.analyze(sid, garment, (68, 28))
    with pytest.raises(UserError, match="multiple of the patch size"):
        service.analyze(sid, garment, (30, 28))
    small = make(checkpoint, analysis_bytes=200 * 10**6)
    lo, hi, step = small.size_range(small.bundled.bundle)
    assert (lo, step) == (4, 4) and 28 < hi < 448  # the controls' range follows the memory budget
    with pytest.raises(UserError, match=r"over the 200 MB memory budget: the largest 448:448 size that fits is"):
        small.analyze(small.open_session(), garment, (448, 448))
    assert small.passes == 0  # refused before any model pass


def test_one_heavy_job_per_session_and_cancel_stops_it(checkpoint, garment):
    service = make(checkpoint)
    sid = service.open_session()
    service.analyze(sid, garment)
    outcome = {}

    def run():
        try:
            service.attribution(sid, "Integrated Gradients", steps=128, smooth=True)
            outcome["result"] = "finished"
        except Cancelled as e:
            outcome["result"] = str(e)
        outcome["at"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    while service.session(sid).job is None:
        time.sleep(0.005)
    with pytest.raises(UserError, match="still running"):
        service.attribution(sid, "Saliency")
    cancelled_at = time.monotonic()
    assert service.cancel(sid)
    thread.join(10)
    assert outcome["result"] == "Cancelled."
    assert outcome["at"] - cancelled_at < 1.0
    assert service.session(sid).job is None
    service.attribution(sid, "Saliency")  # the session can run a job again


def test_jobs_stop_at_the_time_limit(checkpoint, garment):
    service = make(checkpoint, job_timeout=0.05)
    sid = service.open_session()
    service.analyze(sid, garment)
    with pytest.raises(Cancelled, match="time limit"):
        service.attribution(sid, "Integrated Gradients", steps=128, smooth=True)


def test_query_must_be_inside_the_grid(checkpoint, garment):
    service = make(checkpoint)
    sid = service.open_session()
    service.analyze(sid, garment)
    assert service.pick_query(sid, 6, 0) == (6, 0)
    with pytest.raises(UserError, match="outside the 7x7"):
        service.pick_query(sid, 0, -3125)


def test_exports_are_deleted_with_their_session_and_on_close(checkpoint, garment, monkeypatch):
    def write_report(analysis, bundle, out, progress, check):  # the report itself is tested in test_viz
        out.mkdir(parents=True)
        (out / "summary.json").write_text("{}")
    monkeypatch.setattr("viz.report.write_report", write_report)
    service = make(checkpoint)
    sid = service.open_session()
    service.analyze(sid, garment)
    first = service.export(sid)
    second = service.export(sid)
    assert second.is_file() and not first.exists()  # one export per session on disk
    service.close_session(sid)
    assert not second.exists()
    other = service.open_session()
    service.analyze(other, garment)
    path = service.export(other)
    service.close()
    assert not path.exists()


def test_a_repeated_analysis_request_runs_the_model_once(checkpoint, garment):
    """Browsers send a replaced image's change event twice, at once: one pass, the same analysis."""
    service = make(checkpoint)
    sid = service.open_session()
    results = []
    threads = [threading.Thread(target=lambda: results.append(service.analyze(sid, garment))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert service.passes == 1 and results[0] is results[1]
    service.analyze(sid, garment, (32, 28))  # another size is another analysis
    assert service.passes == 2


def test_unexpected_errors_reach_the_visitor_as_an_id(caplog):
    from lens.errors import visitor_message

    message = visitor_message(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"))
    assert "mat1" not in message and re.search(r"Something went wrong \(id [0-9a-f]{8}\)", message)
    incident = re.search(r"id ([0-9a-f]{8})", message).group(1)
    assert any(incident in r.getMessage() and r.exc_info for r in caplog.records)  # the detail is in the log
    assert visitor_message(UserError("\x1b[31mred\x1b[0m words.")) == "red words."


def test_faithfulness_is_the_python_apis_scorecard_and_a_cancellable_job(checkpoint, garment):
    service = make(checkpoint)
    sid = service.open_session()
    with pytest.raises(UserError, match="Upload an image"):
        service.faithfulness(sid)
    analysis = service.analyze(sid, garment)
    with pytest.raises(UserError, match="unknown fill 'purple'"):
        service.faithfulness(sid, "purple")
    clear_caches()
    outcome = {}

    def run():
        try:
            service.faithfulness(sid, "blur")
            outcome["result"] = "finished"
        except Cancelled as e:
            outcome["result"] = str(e)

    thread = threading.Thread(target=run)
    thread.start()
    while service.session(sid).job is None:
        time.sleep(0.005)
    assert service.cancel(sid)
    thread.join(30)
    assert outcome["result"] == "Cancelled."
    card = service.faithfulness(sid, "black", target=3)
    clear_caches()  # the direct call below computes everything again
    bundle = load_checkpoint(checkpoint, "cpu")
    direct = scorecard(bundle.model, analysis.input, 3, bundle.preprocess, FaithfulnessConfig(fills=("black",)))
    assert card is not direct and card.methods == direct.methods and card.target == direct.target == 3
    for method in card.methods:
        assert card.row(method) == pytest.approx(direct.row(method), nan_ok=True), method


def test_the_analysis_carries_the_novelty_of_the_python_api(checkpoint, garment):
    """Without statistics beside the checkpoint the notice says so and flags nothing (energy score)."""
    service = make(checkpoint)
    sid = service.open_session()
    analysis = service.analyze(sid, garment)
    expected = load_checkpoint(checkpoint, "cpu").novelty(read_image(garment))
    assert analysis.novelty.score == pytest.approx(expected.score, abs=1e-5)
    assert analysis.novelty.flag is None and "no novelty statistics" in analysis.novelty.reason
    assert service.whatif(sid, {0: [0]}, []).novelty is None  # a what-if re-run says nothing about the input


def test_a_live_sessions_upload_stays_new_for_age_based_pruning(checkpoint, garment, tmp_path):
    """Gradio prunes its cache by file age (ctime): the upload a live session re-runs from is touched on
    every use, so pruning files older than the session TTL only takes what gone visitors left."""
    upload = tmp_path / "upload.png"
    upload.write_bytes(garment.read_bytes())
    service = make(checkpoint)
    sid = service.open_session()
    service.analyze(sid, upload)
    before = upload.stat().st_ctime_ns
    time.sleep(0.02)
    service.current(sid)
    assert upload.stat().st_ctime_ns > before
