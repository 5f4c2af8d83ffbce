import pytest
import torch

from nmt.errors import ConfigError
from nmt.optim import LearningRateSchedule, build_optimizer


class TrainCfg:
    def __init__(self, optimizer="adam", lr=0.1, momentum=0.0, weight_decay=0.0):
        self.optimizer, self.lr, self.momentum, self.weight_decay = optimizer, lr, momentum, weight_decay


def make_optimizer(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_build_optimizer_kinds():
    params = list(torch.nn.Linear(2, 2).parameters())
    adam = build_optimizer(params, TrainCfg("adam", lr=0.01, weight_decay=0.1))
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["weight_decay"] == 0.1
    sgd = build_optimizer(params, TrainCfg("sgd", lr=0.5, momentum=0.9))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ConfigError, match="train.optimizer"):
        build_optimizer(params, TrainCfg("adagrad"))


def test_adam_uses_the_fused_kernel_and_updates_like_plain_adam():
    torch.manual_seed(0)
    fused_model, plain_model = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    plain_model.load_state_dict(fused_model.state_dict())
    fused = build_optimizer(fused_model.parameters(), TrainCfg("adam", lr=0.01, weight_decay=0.1))
    assert fused.param_groups[0]["fused"]  # this torch has a fused Adam on the CPU
    plain = torch.optim.Adam(plain_model.parameters(), lr=0.01, weight_decay=0.1)
    for _ in range(5):
        x = torch.randn(4, 5)
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            optimizer.zero_grad()
            model(x).square().sum().backward()
            optimizer.step()
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    saved = fused.state_dict()  # a checkpoint round trip keeps the kernel choice
    restored = build_optimizer(fused_model.parameters(), TrainCfg("adam", lr=0.01))
    restored.load_state_dict(saved)
    assert restored.param_groups[0]["fused"]


def test_linear_warmup_then_constant():
    optimizer = make_optimizer()
    schedule = LearningRateSchedule(optimizer, lr=1.0, warmup_steps=4)
    assert [schedule.set_step(s) for s in (1, 2, 3, 4, 5, 100)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert optimizer.param_groups[0]["lr"] == 1.0


def test_plateau_decays_after_patience_on_loss():
    schedule = LearningRateSchedule(make_optimizer(), lr=1.0, factor=0.5, patience=1, metric="loss",
                                    min_lr=0.3)
    decays = [schedule.on_validation({"loss": loss}, step=10) for loss in (5.0, 4.0, 4.5, 4.2, 3.0, 3.5, 3.6, 3.7, 3.8)]
    # 4.5: 1 bad (patience 1 allows it); 4.2: 2nd bad -> decay to 0.5; 3.0 improves;
    # 3.5 bad, 3.6 decay to 0.3 (0.25 clamped by min_lr); 3.7 bad, 3.8 at min: no decay
    assert decays == [False, False, False, True, False, False, True, False, False]
    assert schedule.lr == pytest.approx(0.3)


def test_plateau_on_bleu_is_higher_is_better():
    schedule = LearningRateSchedule(make_optimizer(), lr=1.0, factor=0.1, patience=0, metric="bleu")
    assert not schedule.on_validation({"bleu": 10.0}, step=1)
    assert not schedule.on_validation({"bleu": 12.0}, step=2)
    assert schedule.on_validation({"bleu": 11.0}, step=3)
    assert schedule.lr == pytest.approx(0.1)


def test_constant_never_decays_and_state_round_trips():
    constant = LearningRateSchedule(make_optimizer(), lr=1.0, schedule_type="constant", patience=0)
    assert not any(constant.on_validation({"loss": 1.0}, step=s) for s in range(5))
    schedule = LearningRateSchedule(make_optimizer(), lr=1.0, patience=0, warmup_steps=10)
    schedule.on_validation({"loss": 2.0}, step=20)
    schedule.on_validation({"loss": 3.0}, step=20)
    restored = LearningRateSchedule(make_optimizer(), lr=1.0, patience=0, warmup_steps=10)
    restored.load_state_dict(schedule.state_dict())
    assert restored.lr_at(5) == schedule.lr_at(5) == 0.25
    assert restored.on_validation({"loss": 2.5}, step=20) == schedule.on_validation({"loss": 2.5}, step=20)
    assert restored.base_lr == schedule.base_lr
