"""RestartScheduler as a torch LRScheduler: API, exact resume, per-iteration stepping, and its use
by Lightning's configure_optimizers and a Hugging Face Trainer."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

import structsparse as ss


def model_and_opt(seed=0, momentum=0.9):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = ss.create_optimizer(
        m, "ramda", lam=1e-2, lr=0.05, momentum=momentum, backend="reference", max_iters=5
    )
    return m, opt


def batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 6, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(n)]


def train_step(m, opt, x, y):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(m(x), y).backward()
    opt.step()


def test_is_an_lr_scheduler_with_last_lr():
    m, opt = model_and_opt()
    s = ss.RestartScheduler(opt, [2, 3], gamma=0.5)
    assert isinstance(s, torch.optim.lr_scheduler.LRScheduler)
    assert s.get_last_lr() == [0.05, 0.05] and s.last_epoch == 0
    assert all(g["initial_lr"] == 0.05 for g in opt.param_groups)
    for epoch in range(1, 4):
        for x, y in batches(2, epoch):
            train_step(m, opt, x, y)
            s.step_iteration()
        s.step()
        expect = 0.05 * 0.5 ** sum(epoch >= k for k in (2, 3))
        assert s.get_last_lr() == pytest.approx([expect, expect]) and s.last_epoch == epoch
    with pytest.raises(ValueError, match="epoch"):
        s.step(5)


def run_schedule(per_iteration: bool, epochs=4, steps=3, split_at=None):
    """Train ``epochs`` epochs; with ``split_at``, save at that iteration and resume in a new
    model/optimizer/scheduler. Returns the final weights and momentum."""
    m, opt = model_and_opt(momentum=0.9)
    kw = dict(steps_per_epoch=steps) if per_iteration else {}
    s = ss.RestartScheduler(opt, [1, 2], gamma=0.5, **kw)
    data = batches(epochs * steps)
    it = 0
    for _ in range(epochs):
        for _ in range(steps):
            train_step(m, opt, *data[it])
            if per_iteration:
                s.step()
            else:
                s.step_iteration()
            it += 1
            if split_at == it:
                buf = io.BytesIO()
                torch.save({"m": m.state_dict(), "o": opt.state_dict(), "s": s.state_dict()}, buf)
                buf.seek(0)
                ck = torch.load(buf, weights_only=True)
                m, opt = model_and_opt(seed=1)
                m.load_state_dict(ck["m"])
                opt.load_state_dict(ck["o"])
                s = ss.RestartScheduler(opt, [1, 2], gamma=0.5, **kw)
                s.load_state_dict(ck["s"])
        if not per_iteration:
            s.step()
    return [p.detach().clone() for p in m.parameters()], opt.param_groups[0]["momentum"], s


def test_per_iteration_stepping_equals_per_epoch_stepping():
    w_epoch, c_epoch, s1 = run_schedule(False)
    w_iter, c_iter, s2 = run_schedule(True)
    for a, b in zip(w_epoch, w_iter):
        assert torch.equal(a, b)
    # the sqrt ramp ran after the last milestone (epoch 2): 6 iterations, c = min(0.1·sqrt(6), 1)
    assert c_epoch == c_iter == pytest.approx(1 - min(0.1 * math.sqrt(6), 1.0))
    assert s1.epoch == s2.epoch == 4 and s2.last_epoch == 12 and s1.last_epoch == 4
    with pytest.raises(RuntimeError, match="step_iteration"):
        s2.step_iteration()


@pytest.mark.parametrize("per_iteration", [False, True])
@pytest.mark.parametrize("split_at", [2, 4, 7])
def test_state_dict_resumes_exactly(per_iteration, split_at):
    w_full, c_full, s_full = run_schedule(per_iteration)
    w_res, c_res, s_res = run_schedule(per_iteration, split_at=split_at)
    for a, b in zip(w_full, w_res):
        assert torch.equal(a, b)
    assert c_full == c_res
    assert s_full.state_dict() == s_res.state_dict()


def test_old_state_dict_without_lr_scheduler_fields_loads():
    m, opt = model_and_opt()
    s = ss.RestartScheduler(opt, [1, 2])
    s.load_state_dict(
        {"milestones": [1, 2], "gamma": 0.1, "ramp": "sqrt", "epoch": 1, "iteration": 0, "c0": None}
    )
    assert s.epoch == 1
    s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.1)


def test_bad_arguments():
    _, opt = model_and_opt()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="steps_per_epoch"):
            ss.RestartScheduler(opt, [1], steps_per_epoch=bad)


def test_lightning_accepts_it_in_configure_optimizers():
    pl = pytest.importorskip("lightning.pytorch")

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            opt = ss.create_optimizer(
                self, "ramda", lam=1e-2, lr=0.05, momentum=0.9, backend="reference", max_iters=5
            )
            sched = ss.RestartScheduler(opt, [1, 2], gamma=0.5, steps_per_epoch=4)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    data = torch.utils.data.TensorDataset(torch.randn(16, 6), torch.randint(0, 3, (16,)))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    module = Module()
    trainer = pl.Trainer(
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.last_epoch == 12 and sched.epoch == 3
    assert sched.get_last_lr()[0] == pytest.approx(0.05 * 0.25)


def test_hugging_face_trainer_steps_it_every_iteration(tmp_path):
    transformers = pytest.importorskip("transformers")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))

        def forward(self, x, labels=None):
            logits = self.net(x)
            return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}

    class Data(torch.utils.data.Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.x, self.y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)

        def __len__(self):
            return 16

        def __getitem__(self, i):
            return {"x": self.x[i], "labels": self.y[i]}

    model = Net()
    opt = ss.create_optimizer(
        model, "ramda", lam=1e-2, lr=0.05, momentum=0.9, backend="reference", max_iters=5
    )
    sched = ss.RestartScheduler(opt, [1, 2], gamma=0.5, steps_per_epoch=4)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_train_epochs=3,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Data(), optimizers=(opt, sched))
    trainer.train()
    assert sched.last_epoch == 12 and sched.epoch == 3
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert lrs[0] == pytest.approx(0.05) and lrs[-1] == pytest.approx(0.05 * 0.25)
    copy.deepcopy(sched.state_dict())
