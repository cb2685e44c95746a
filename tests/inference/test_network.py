import pytest
import torch

from pyro_dturbo.data import support_f1, teacher_student
from pyro_dturbo.inference.network import (
    NetworkModuleA,
    evaluate_accuracy,
    fit_network,
    load_checkpoint,
    save_checkpoint,
)
from pyro_dturbo.models import SparsePrior, to_sparse_bayes
from pyro_dturbo.models.zoo import MLP
from tests.common import assert_close

PRIOR = SparsePrior.chain(0.05, 0.2, active=(1.0, 1.0), inactive=(1.0, 1e-4))


def _small_problem(num_train=300):
    data = teacher_student(num_train=num_train, num_test=200, in_features=16, num_classes=3)
    return data.x_train.double(), data.y_train, data


def test_teacher_student_support_recovery():
    """A clustered teacher's relevant inputs are found: F1 >= 0.9 on the support."""
    data = teacher_student(seed=0)
    net = to_sparse_bayes(MLP(64, (), 4))
    result = fit_network(
        net, data.x_train.double(), data.y_train, PRIOR, epochs=30, batch_size=128, lr=1e-2
    )
    estimate = result.support_probs["fc1"] > 0.5
    assert support_f1(estimate, data.support["fc1"]) >= 0.9
    assert evaluate_accuracy(net, data.x_test.double(), data.y_test) > 0.85


def test_evidence_is_extrinsic():
    """Module A's message about s does not depend on the prior message pi it was given."""
    x, y, _ = _small_problem()
    module_a = NetworkModuleA(to_sparse_bayes(MLP(16, (8,), 3)), PRIOR, x, y)
    params = module_a.init_params(
        {k: torch.full(s, 0.5) for k, s in module_a.support_shape.items()}
    )
    low = {k: torch.full(s, -3.0) for k, s in module_a.support_shape.items()}
    high = {k: torch.full(s, 3.0) for k, s in module_a.support_shape.items()}
    params_low, evidence_low, _ = module_a.update(params, low)
    params_high, evidence_high, _ = module_a.update(params, high)
    assert_close(evidence_low, evidence_high)
    # ... while q(s) did follow the prior message
    q_low = module_a.support_probs(params_low)["fc1"]
    q_high = module_a.support_probs(params_high)["fc1"]
    assert bool((q_high >= q_low).all()) and bool((q_high > q_low + 0.1).any())


def test_resume_equals_uninterrupted_run(tmp_path):
    x, y, _ = _small_problem()
    kwargs = dict(epochs=4, batch_size=64, seed=3, finetune_epochs=1)
    full_net = to_sparse_bayes(MLP(16, (8,), 3))
    first_net = to_sparse_bayes(MLP(16, (8,), 3))
    first_net.load_state_dict(full_net.state_dict())
    full = fit_network(full_net, x, y, PRIOR, **kwargs)

    stop = {}

    def interrupt(state):
        if state.iteration == 2:
            save_checkpoint(tmp_path / "ckpt.pt", state)
            stop["done"] = True

    fit_network(first_net, x, y, PRIOR, hook_fn=interrupt, **kwargs)
    assert stop
    resumed_net = to_sparse_bayes(MLP(16, (8,), 3))
    state = load_checkpoint(tmp_path / "ckpt.pt")
    assert state.iteration == 2
    resumed = fit_network(resumed_net, x, y, PRIOR, state=state, **kwargs)
    assert_close(resumed_net.state_dict(), full_net.state_dict(), atol=0, rtol=0)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]


def test_seed_reproducibility_and_history():
    x, y, _ = _small_problem()
    seen = []
    runs = []
    for seed in (0, 0, 1):
        net = to_sparse_bayes(MLP(16, (8,), 3))
        torch.manual_seed(0)
        net.load_state_dict(to_sparse_bayes(MLP(16, (8,), 3)).state_dict())
        runs.append(fit_network(net, x, y, PRIOR, epochs=2, seed=seed, hook_fn=seen.append))
    assert runs[0].history[-1]["loss"] == runs[1].history[-1]["loss"]
    assert runs[0].history[-1]["loss"] != runs[2].history[-1]["loss"]
    assert len(seen) == 6
    for key in ("loss", "accuracy", "density", "delta_pi", "time"):
        assert key in runs[0].history[-1]


def test_finetune_freezes_support_and_masks():
    x, y, data = _small_problem(600)
    net = to_sparse_bayes(MLP(16, (8,), 3))
    result = fit_network(
        net, x, y, PRIOR, epochs=8, finetune_epochs=3, eval_data=(data.x_test.double(), data.y_test)
    )
    densities = [r["density"] for r in result.history[-4:]]
    assert len(set(densities)) == 1  # the support is frozen in the last epochs
    for name, probs in result.support_probs.items():
        layer = getattr(net, name)
        assert torch.equal(layer.mask.bool(), probs > 0.5)
        assert torch.all(layer.posterior_mean()[probs <= 0.5] == 0)
    assert "test_accuracy" in result.history[-1]


def test_map_finetune_changes_only_the_frozen_phase():
    x, y, _ = _small_problem(400)
    histories = {}
    for mode in ("map", "vb"):
        torch.manual_seed(1)
        net = to_sparse_bayes(MLP(16, (8,), 3))
        histories[mode] = fit_network(net, x, y, PRIOR, epochs=5, finetune_epochs=2, finetune=mode)
        assert not any(layer.deterministic for layer in (net.fc1, net.fc2))
    losses = {mode: [r["loss"] for r in h.history] for mode, h in histories.items()}
    assert losses["map"][:3] == losses["vb"][:3]  # the same run until the support freezes
    assert losses["map"][3:] != losses["vb"][3:]
    with pytest.raises(ValueError, match="finetune"):
        fit_network(net, x, y, PRIOR, finetune="sgd")


def test_bad_inputs():
    x, y, _ = _small_problem()
    net = to_sparse_bayes(MLP(16, (8,), 3))
    with pytest.raises(ValueError, match="integer"):
        fit_network(net, x, y.double(), PRIOR)
    with pytest.raises(ValueError, match="labels"):
        fit_network(net, x, y[:-1], PRIOR)
    with pytest.raises(ValueError, match="unknown layers"):
        fit_network(net, x, y, PRIOR.replace(layer_priors={"conv7": PRIOR}))
    with pytest.raises(ValueError, match="sparse Bayesian layer"):
        fit_network(MLP(16, (8,), 3), x, y, PRIOR)
    with pytest.raises(ValueError, match="finetune_epochs"):
        fit_network(net, x, y, PRIOR, epochs=2, finetune_epochs=2)
    with pytest.raises(ValueError, match="NaN"):
        fit_network(net, x * float("nan"), y, PRIOR)
    with pytest.raises(FileNotFoundError):
        load_checkpoint("/nonexistent/ckpt.pt")


def test_conv_net_end_to_end_export_matches():
    """LeNet-5 on small images: train, prune, export; the compact net predicts the same."""
    from pyro_dturbo.compression import export_compact, prune
    from pyro_dturbo.models.zoo import LeNet5

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 1, 16, 16, generator=gen)
    y = (x[:, 0, :8].mean((1, 2)) > 0).long()  # the top half of the image decides
    net = to_sparse_bayes(LeNet5(1, 2, image_size=16))
    result = fit_network(net, x, y, PRIOR, epochs=3, batch_size=32, finetune_epochs=1)
    assert set(result.support_probs) == {"conv1", "conv2", "fc1", "fc2", "fc3"}
    assert result.support_probs["conv2"].shape == (16, 6, 5, 5)
    prune(net)
    compact = export_compact(net, (1, 16, 16))
    net.eval()
    assert_close(compact(x), net(x), atol=1e-8)


def test_per_layer_prior_override_takes_effect():
    x, y, _ = _small_problem(600)
    sparse_fc2 = SparsePrior.independent(1e-4, active=(1.0, 1.0), inactive=(1.0, 1e-4))
    prior = PRIOR.replace(layer_priors={"fc2": sparse_fc2})
    net = to_sparse_bayes(MLP(16, (8,), 3))
    result = fit_network(net, x, y, prior, epochs=6)
    density = {k: float((v > 0.5).double().mean()) for k, v in result.support_probs.items()}
    reference = fit_network(to_sparse_bayes(MLP(16, (8,), 3)), x, y, PRIOR, epochs=6)
    ref_density = {k: float((v > 0.5).double().mean()) for k, v in reference.support_probs.items()}
    assert density["fc2"] < ref_density["fc2"]


def test_network_guide_with_predictive_and_elbo():
    import pyro
    from pyro.infer import Predictive, Trace_ELBO

    data = teacher_student(num_train=1000, num_test=300, seed=1)
    x, y, x_test = data.x_train.double(), data.y_train, data.x_test.double()
    net = to_sparse_bayes(MLP(64, (), 4))
    result = fit_network(net, x, y, PRIOR, epochs=10, batch_size=100, lr=1e-2)
    guide = result.guide()
    assert_close(guide.support_probs()["fc1"], result.support_probs["fc1"])
    samples = Predictive(result.model, guide=guide, num_samples=40)(x_test)
    assert samples["obs"].shape == (40, len(x_test))
    # Predictive pads global sites with one dim per plate (here the data plate)
    assert samples["fc1.weight"].shape == (40, 1, 4, 64)
    # the posterior-predictive majority vote predicts about as well as the posterior mean
    majority = float((samples["obs"].mode(0).values == data.y_test).double().mean())
    mean_accuracy = evaluate_accuracy(net, x_test, data.y_test)
    assert mean_accuracy > 0.75
    assert majority > mean_accuracy - 0.1
    loss = Trace_ELBO().loss(result.model, guide, x, y)
    assert torch.isfinite(torch.tensor(loss))
    pyro.clear_param_store()
