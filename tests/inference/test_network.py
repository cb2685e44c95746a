import pytest
import torch

from pyro_dturbo.data import support_f1, teacher_student
from pyro_dturbo.inference.network import (
    NetworkConfig,
    NetworkModuleA,
    evaluate_accuracy,
    fit_network,
    load_checkpoint,
    save_checkpoint,
)
from pyro_dturbo.models import SparsePrior, to_sparse_bayes
from pyro_dturbo.models.zoo import MLP
from pyro_dturbo.ops import BernoulliMessage, GaussianMessage
from tests.common import assert_close

PRIOR = SparsePrior.chain(0.05, 0.2, active=(1.0, 1.0), inactive=(1.0, 1e-4))


def _small_problem(num_train=300):
    data = teacher_student(num_train=num_train, num_test=200, in_features=16, num_classes=3)
    return data.x_train.double(), data.y_train, data


def test_teacher_student_support_recovery():
    """A clustered teacher's relevant inputs are found, on several seeds.

    Measured support F1 on seeds 0-4: 0.926, 0.903, 0.857, 0.949, 0.902 (test accuracy
    0.92-0.94). Claim: F1 >= 0.8 on every seed and >= 0.9 on at least 3 of the 5.
    """
    scores = []
    for seed in range(5):
        data = teacher_student(seed=seed)
        torch.manual_seed(seed)
        net = to_sparse_bayes(MLP(64, (), 4)).double()
        result = fit_network(
            net, data.x_train.double(), data.y_train, PRIOR, epochs=30, lr=1e-2, seed=seed
        )
        scores.append(support_f1(result.support_probs["fc1"] > 0.5, data.support["fc1"]))
        assert evaluate_accuracy(net, data.x_test.double(), data.y_test) > 0.85
    assert min(scores) >= 0.8, scores
    assert sum(score >= 0.9 for score in scores) >= 3, scores


def _flat(module_a, value):
    return {k: BernoulliMessage(torch.full(s, value)) for k, s in module_a.support_shape.items()}


def test_evidence_does_not_contain_the_prior_message():
    """Module A's message about s does not depend on the prior message pi it was given."""
    x, y, _ = _small_problem()
    module_a = NetworkModuleA(to_sparse_bayes(MLP(16, (8,), 3)), PRIOR, x, y)
    params = module_a.init_params(_flat(module_a, 0.0))
    params_low, evidence_low, _ = module_a.update(params, _flat(module_a, -3.0))
    params_high, evidence_high, _ = module_a.update(params, _flat(module_a, 3.0))
    assert_close(
        {k: m.logits for k, m in evidence_low.items()},
        {k: m.logits for k, m in evidence_high.items()},
    )
    # ... while q(s) did follow the prior message
    q_low = module_a.support_probs(params_low)["fc1"]
    q_high = module_a.support_probs(params_high)["fc1"]
    assert bool((q_high >= q_low).all()) and bool((q_high > q_low + 0.1).any())


def _echo(evidence_mode, steps_per_iter, seed):
    """|L| moved, an iteration later, by shifting logit(pi) by 6 on every 5th weight once."""
    data = teacher_student(num_train=600, num_test=10, in_features=32, num_classes=4, seed=seed)
    x, y = data.x_train.double(), data.y_train
    torch.manual_seed(seed)
    net = to_sparse_bayes(MLP(32, (16,), 4))
    config = NetworkConfig(
        batch_size=60, lr=1e-2, steps_per_iter=steps_per_iter, evidence=evidence_mode, seed=seed
    )
    module_a = NetworkModuleA(net, PRIOR, x, y, config)
    common = _flat(module_a, -1.0)
    params = module_a.init_params(common)
    for _ in range(8):  # settle first
        params, _, _ = module_a.update(params, common)
    shifted = {
        k: BernoulliMessage(
            m.logits + 6.0 * (torch.arange(m.logits.numel()) % 5 == 0).reshape(m.logits.shape)
        )
        for k, m in common.items()
    }
    moved = {}
    for name, pi in (("common", common), ("shifted", shifted)):
        after, _, _ = module_a.update(params, pi)
        _, evidence, _ = module_a.update(after, common)
        moved[name] = torch.cat([m.logits.reshape(-1) for m in evidence.values()])
    every5 = torch.cat([(torch.arange(m.logits.numel()) % 5 == 0) for m in common.values()])
    delta = (moved["shifted"] - moved["common"]).abs()
    return float(delta[every5].median()), float(delta[every5].max()), float(delta[~every5].median())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_curvature_site_does_not_echo_the_prior_message(seed):
    """pi -> q(s) -> E[rho] -> next w-steps: the next L must not carry pi back.

    Shift logit(pi) by 6 on every 5th weight for one iteration, continue with the common pi,
    and compare the next L of the shifted weights. Measured on this problem (10 steps per
    iteration, seeds 0-2): the marginal site (the default) moves them by a median of 0.17-0.20
    nats, the curvature site by 0.012-0.017 (the other weights: 0.010-0.016). Bound for the
    curvature site: a median below 0.05 on every seed.
    """
    median, _, others = _echo("curvature", 10, seed)
    assert median < 0.05, (median, others)


def test_the_marginal_site_echoes():
    """The guard, and the known limitation of the default: the marginal site does echo."""
    median, _, others = _echo("marginal", 10, 0)
    assert median > 0.1 and median > 5 * others


def test_set_posterior_round_trips_the_moments():
    layer = to_sparse_bayes(MLP(4, (), 3)).fc1
    mean, variance = torch.randn(3, 4), torch.rand(3, 4) + 0.1
    layer.set_posterior(GaussianMessage.from_moments(mean, variance))
    assert_close(layer.weight_loc, mean, atol=1e-12)
    assert_close(layer.weight_variance, variance, atol=1e-12)


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


def test_update_does_not_change_its_input():
    """Calling update twice on one params gives the same result (Adam's state is not shared)."""
    x, y, _ = _small_problem()
    module_a = NetworkModuleA(to_sparse_bayes(MLP(16, (8,), 3)), PRIOR, x, y)
    params = module_a.init_params(_flat(module_a, 0.0))
    params, _, _ = module_a.update(params, _flat(module_a, 0.0))  # Adam has state now
    first = module_a.update(params, _flat(module_a, 0.0))
    second = module_a.update(params, _flat(module_a, 0.0))
    assert first[2]["loss"] == second[2]["loss"]
    assert_close(first[0]["net"], second[0]["net"], atol=0, rtol=0)


def test_resume_twice_from_one_in_memory_state():
    x, y, _ = _small_problem()
    kwargs = dict(epochs=5, batch_size=64, seed=3, finetune_epochs=1)
    torch.manual_seed(0)
    template = to_sparse_bayes(MLP(16, (8,), 3)).state_dict()
    nets = [to_sparse_bayes(MLP(16, (8,), 3)) for _ in range(4)]
    for net in nets:
        net.load_state_dict(template)
    full = fit_network(nets[0], x, y, PRIOR, **kwargs)
    states = {}

    def keep(state):
        if state.iteration == 2:
            states["mid"] = state

    fit_network(nets[1], x, y, PRIOR, hook_fn=keep, **kwargs)
    resumed = [fit_network(net, x, y, PRIOR, state=states["mid"], **kwargs) for net in nets[2:]]
    for run, net in zip(resumed, nets[2:], strict=True):
        assert [r["loss"] for r in run.history] == [r["loss"] for r in full.history]
        assert_close(net.state_dict(), nets[0].state_dict(), atol=0, rtol=0)


def test_training_leaves_the_global_generator_alone():
    x, y, _ = _small_problem()
    net = to_sparse_bayes(MLP(16, (8,), 3))  # (building a network draws from it, of course)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    fit_network(net, x, y, PRIOR, epochs=2)
    assert torch.equal(torch.get_rng_state(), before)
    # ...and the global generator's state does not change the run
    torch.manual_seed(0)
    template = to_sparse_bayes(MLP(16, (8,), 3)).state_dict()
    losses = []
    for global_seed in (1, 2):
        net = to_sparse_bayes(MLP(16, (8,), 3))
        net.load_state_dict(template)
        torch.manual_seed(global_seed)
        losses.append(fit_network(net, x, y, PRIOR, epochs=2).history[-1]["loss"])
    assert losses[0] == losses[1]


def test_two_networks_in_one_process_are_independent():
    """Interleaved updates of two networks of one architecture equal each one's run alone."""
    x, y, _ = _small_problem()

    def module(seed):
        torch.manual_seed(seed)
        net = to_sparse_bayes(MLP(16, (8,), 3))
        return NetworkModuleA(net, PRIOR, x, y, NetworkConfig(seed=seed))

    alone = []
    for seed in (0, 1):
        m = module(seed)
        params = m.init_params(_flat(m, 0.0))
        for _ in range(3):
            params, _, metrics = m.update(params, _flat(m, 0.0))
        alone.append((metrics["loss"], params["net"]))
    a, b = module(0), module(1)
    pa, pb = a.init_params(_flat(a, 0.0)), b.init_params(_flat(b, 0.0))
    for _ in range(3):
        pa, _, ma = a.update(pa, _flat(a, 0.0))
        pb, _, mb = b.update(pb, _flat(b, 0.0))
    assert ma["loss"] == alone[0][0] and mb["loss"] == alone[1][0]
    assert_close(pa["net"], alone[0][1], atol=0, rtol=0)
    assert_close(pb["net"], alone[1][1], atol=0, rtol=0)


def test_network_config_names_the_bad_field():
    with pytest.raises(ValueError, match="NetworkConfig.lr"):
        NetworkConfig(lr=-1.0)
    with pytest.raises(ValueError, match="NetworkConfig.evidence"):
        NetworkConfig(evidence="fisher")
    with pytest.raises(ValueError, match="no field"):
        NetworkConfig().replace(learning_rate=1.0)
    config = NetworkConfig(epochs=7, lr=1e-2)
    assert NetworkConfig.from_dict(config.to_dict()) == config


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


def test_map_finetune_moves_the_means_only_and_skips_module_b():
    """MAP fine-tuning: log sigma is left as the variational steps left it (no gradient, so
    Adam skips it), the means move, Module B does not run and its message stays what it would
    compute from the frozen evidence."""
    x, y, _ = _small_problem(400)
    torch.manual_seed(2)
    net = to_sparse_bayes(MLP(16, (8,), 3))
    before = fit_network(net, x, y, PRIOR, epochs=3)  # the run up to the freeze
    torch.manual_seed(2)
    net = to_sparse_bayes(MLP(16, (8,), 3))
    turbo = NetworkModuleA(net, PRIOR, x, y, NetworkConfig(epochs=5, finetune_epochs=2))
    result = fit_network(net, x, y, PRIOR, epochs=5, finetune_epochs=2)
    for name in ("fc1", "fc2"):
        frozen = before.params["net"][f"{name}.weight_log_scale"]
        assert torch.equal(result.params["net"][f"{name}.weight_log_scale"], frozen)
        loc = f"{name}.weight_loc"
        assert not torch.equal(result.params["net"][loc], before.params["net"][loc])
    assert [r["time_b"] for r in result.history[3:]] == [0.0, 0.0]
    assert all(r["time_b"] > 0 for r in result.history[:3])
    assert [r["delta_pi"] for r in result.history[3:]] == [0.0, 0.0]
    # the kept message is Module B's output on the frozen evidence (damping 0)
    from pyro_dturbo.inference.turbo import TurboVBI

    module_b = TurboVBI(turbo, PRIOR).module_b
    again = module_b(result.state.evidence, result.state.prior).messages
    for name, message in result.state.prior.items():
        assert_close(again[name].logits, message.logits)


def test_finetune_kl_weight_changes_only_the_fine_tuning():
    """``finetune_kl_weight`` weights the prior in the frozen epochs only; 0 is plain
    cross-entropy there (the KL's gradient on the means vanishes, so they move differently)."""
    x, y, _ = _small_problem(400)
    results = {}
    for weight in (None, 0.0):
        torch.manual_seed(3)
        net = to_sparse_bayes(MLP(16, (8,), 3))
        results[weight] = fit_network(
            net, x, y, PRIOR, epochs=5, finetune_epochs=2, finetune_kl_weight=weight
        )
    same, plain = results[None].history, results[0.0].history
    assert [r["loss"] for r in same[:3]] == [r["loss"] for r in plain[:3]]
    assert same[-1]["loss"] != plain[-1]["loss"]
    assert same[-1]["density"] == plain[-1]["density"]  # the support is frozen before
    with pytest.raises(ValueError, match="finetune_kl_weight"):
        NetworkConfig(finetune_kl_weight=-1.0)


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
    dtype = torch.get_default_dtype()  # the network's (Predictive runs the model as it is)
    x, y, x_test = data.x_train.to(dtype), data.y_train, data.x_test.to(dtype)
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
