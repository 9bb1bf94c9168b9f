"""TOML run configs: valid files load, every bad field is an error naming it, round trip."""
import pytest

from mesu_snn.config import ConfigError, RunConfig, dump_toml, load_config, parse_config
from mesu_snn.rules.registry import RULES

GOOD = """
seed = 3
[data]
dataset = "mnist"
train_per_task = 300
test_per_task = 200
[stream]
kind = "permuted"
n_tasks = 10
batch_size = 16
[encoder]
kind = "current"
num_steps = 10
gain = 2.0
[model]
hidden = [64]
[rule]
name = "mesu"
memory = 3000
sigma_prior = 0.1
[schedule]
eval_every = 50
"""


def _write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_config_loads_with_types(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.seed == 3 and cfg.data.dataset == "mnist" and cfg.stream.n_tasks == 10
    assert cfg.rule.name == "mesu" and cfg.rule.params == {"memory": 3000.0, "sigma_prior": 0.1}
    assert isinstance(cfg.rule.params["memory"], float)
    assert cfg.schedule.eval_every == 50 and cfg.model.hidden == [64]


def test_round_trip_through_toml(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD))
    again = load_config(_write(tmp_path, dump_toml(cfg), "d.toml"))
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("section,line,field", [
    ("stream", "n_tasks = 0", "stream.n_tasks"),
    ("stream", "batch_size = 2.5", "stream.batch_size"),
    ("stream", "kind = \"rotated\"", "stream.kind"),
    ("stream", "transition = 1.5", "stream.transition"),
    ("data", "dataset = \"cifar\"", "data.dataset"),
    ("data", "train_per_task = -1", "data.train_per_task"),
    ("encoder", "num_steps = \"ten\"", "encoder.num_steps"),
    ("model", "hidden = [64, 0]", "model.hidden[1]"),
    ("model", "beta = 1.5", "model.beta"),
    ("model", "readout = \"rate\"", "model.readout"),
    ("model", "sigma_init = 0", "model.sigma_init"),
    ("rule", "memory = -5", "rule.memory"),
    ("rule", "lr = 0.1", "rule.lr"),
    ("schedule", "eval_samples = 0", "schedule.eval_samples"),
    ("schedule", "ood = 1", "schedule.ood"),
    ("schedule", "colour = 1", "schedule.colour"),
    # non-finite, unsafe and huge values (issue 12)
    ("rule", "lr_mu = nan", "rule.lr_mu"), ("rule", "sigma_prior = inf", "rule.sigma_prior"),
    ("rule", "mu_prior = nan", "rule.mu_prior"), ("rule", "memory = 0.5", "rule.memory"),
    ("model", "beta = nan", "model.beta"), ("model", "threshold = inf", "model.threshold"),
    ("stream", "batch_size = 99999999999", "stream.batch_size"),
    ("schedule", "max_abs_parameter = 0", "schedule.max_abs_parameter"),
    ("schedule", "chance_patience = -1", "schedule.chance_patience"),
])
def test_bad_field_named_in_error(tmp_path, section, line, field):
    text = GOOD.replace(f"[{section}]\n", f"[{section}]\n{line}\n")
    if line.split(" = ")[0] in GOOD.split(f"[{section}]")[1].split("[")[0]:
        # replace the existing key instead of duplicating it (duplicate keys are invalid TOML)
        key = line.split(" = ")[0]
        body = GOOD.split(f"[{section}]\n")[1].split("\n[")[0]
        new_body = "\n".join(line if b.startswith(key + " =") else b for b in body.split("\n"))
        text = GOOD.replace(body, new_body)
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, text))
    assert f"config field {field}:" in str(e.value)
    assert "c.toml" in str(e.value)


def test_missing_rule_unknown_section_and_cross_checks():
    with pytest.raises(ConfigError, match="rule"):
        parse_config({"seed": 0})
    with pytest.raises(ConfigError, match="rule.name"):
        parse_config({"rule": {"memory": 1.0}})
    with pytest.raises(ConfigError, match="config field optimiser"):
        parse_config({"rule": {"name": "sgd"}, "optimiser": {}})
    with pytest.raises(ConfigError, match="config field seed"):
        parse_config({"seed": -1, "rule": {"name": "sgd"}})
    with pytest.raises(ConfigError, match="encoder.kind"):
        parse_config({"rule": {"name": "sgd"}, "data": {"dataset": "nmnist"}})
    with pytest.raises(ConfigError, match="encoder.kind"):
        parse_config({"rule": {"name": "sgd"}, "encoder": {"kind": "frames"}})
    with pytest.raises(ConfigError, match="rule.base"):
        parse_config({"rule": {"name": "ewc", "base": "rmsprop"}})
    cfg = parse_config({"rule": {"name": "ewc", "ewc_lambda": 10, "fisher_samples": 50}})
    assert isinstance(cfg, RunConfig) and cfg.rule.params["fisher_samples"] == 50


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(IsADirectoryError):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(_write(tmp_path, "seed = [\n"))
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(p)


def test_every_shipped_config_is_valid():
    from pathlib import Path
    configs = sorted((Path(__file__).resolve().parents[1] / "experiments" / "configs").glob("*.toml"))
    assert len(configs) >= 2
    for path in configs:
        cfg = load_config(path)
        assert cfg.rule.name in RULES


def test_no_shipped_config_hard_codes_a_data_root():
    """Shipped configs leave the data folder to the usual resolution (--data-root, $MESU_SNN_DATA,
    data/): no ``data.root`` and no path of this repository's CI layout."""
    import tomllib
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    configs = [p for p in repo.rglob("*.toml") if p.name != "pyproject.toml" and ".venv" not in p.parts
               and "runs" not in p.relative_to(repo).parts[:1]]
    assert len(configs) >= 4
    for path in configs:
        raw = tomllib.loads(path.read_text())
        assert "root" not in raw.get("data", {}), path
        assert "shared/data" not in path.read_text(), path


def test_data_root_resolution_order_through_train(tmp_path, monkeypatch, capsys):
    """A config without data.root: ``--data-root`` wins over $MESU_SNN_DATA, which wins over data/;
    the error for missing files names the folder that was chosen."""
    from pathlib import Path
    from mesu_snn.cli import main
    cfg = tmp_path / "m.toml"
    cfg.write_text('[data]\ndataset = "mnist"\n[rule]\nname = "sgd"\n')
    monkeypatch.chdir(tmp_path)

    def chosen(*extra):
        assert main(["train", str(cfg), "--out", str(tmp_path / "out"), "--quiet", *extra]) == 1
        err = capsys.readouterr().err
        assert "not found" in err and not (tmp_path / "out").exists()
        return err
    monkeypatch.delenv("MESU_SNN_DATA", raising=False)
    assert str(Path("data") / "MNIST") in chosen()
    monkeypatch.setenv("MESU_SNN_DATA", str(tmp_path / "from_env"))
    assert "from_env" in chosen()
    err = chosen("--data-root", str(tmp_path / "from_flag"))
    assert "from_flag" in err and "from_env" not in err


def test_encoder_defaults_are_valid_for_every_kind():
    """A key the user never wrote cannot make a config invalid: each encoder kind loads with the
    defaults, ``rate`` with a gain <= 1; an explicit bad gain is still an error naming it."""
    from mesu_snn.config import ENCODERS, GAIN_DEFAULTS
    for kind in ENCODERS:
        data = {"dataset": "nmnist"} if kind == "frames" else {}
        cfg = parse_config({"data": data, "encoder": {"kind": kind}, "rule": {"name": "sgd"}})
        assert cfg.encoder.gain == GAIN_DEFAULTS[kind]
        assert parse_config(cfg.to_dict()).encoder.gain == cfg.encoder.gain      # round trip keeps it
    assert parse_config({"encoder": {"kind": "rate"}, "rule": {"name": "sgd"}}).encoder.gain == 1.0
    assert parse_config({"encoder": {"kind": "current"}, "rule": {"name": "sgd"}}).encoder.gain == 2.0
    with pytest.raises(ConfigError, match="encoder.gain.*<= 1, got 2.0"):
        parse_config({"encoder": {"kind": "rate", "gain": 2.0}, "rule": {"name": "sgd"}})


def test_list_messages_read_plainly():
    """A list field's message never says 'a list of at least 0 integers'."""
    with pytest.raises(ConfigError) as e:
        parse_config({"model": {"hidden": "64"}, "rule": {"name": "sgd"}})
    assert "model.hidden: must be a list of integers, got '64'" in str(e.value) and "at least 0" not in str(e.value)
    with pytest.raises(ConfigError, match="model.channels: must be a list of at least 1 integer, got"):
        parse_config({"model": {"channels": []}, "rule": {"name": "sgd"}})


# -- every field bounded, nothing silently ignored or capped, strings round-trip ------------

@pytest.mark.parametrize("section,line,what", [("schedule", "eval_samples = 100000000", "an evaluation batch"),
                                               ("model", "hidden = [1000000000]", "a training update")])
def test_sizes_beyond_memory_are_refused_before_training_with_the_estimate(tmp_path, section, line, what):
    text = GOOD.replace(f"[{section}]\n", f"[{section}]\n{line}\n").replace("hidden = [64]\n", "") \
        if section == "model" else GOOD.replace(f"[{section}]\n", f"[{section}]\n{line}\n")
    with pytest.raises(ConfigError, match=rf"{what} would need about [\d.e+]+ [TGMk]?B \([\d.e+]+ bytes.*more than the"):
        load_config(_write(tmp_path, text))
    from mesu_snn.config import check_memory, estimate_memory
    cfg = load_config(_write(tmp_path, GOOD))
    est = estimate_memory(cfg)
    assert 0 < est["train"] < 1e9 and 0 < est["evaluation"] < 1e10
    with pytest.raises(ConfigError, match="more than the 1 kB"):
        check_memory(cfg, available=1000)


def test_task_counts_are_never_silently_ignored(tmp_path):
    split = GOOD.replace('kind = "permuted"', 'kind = "split"')
    with pytest.raises(ConfigError, match=r"stream.n_tasks: a split stream has one task per 2 classes, so 5 tasks"):
        load_config(_write(tmp_path, split))
    assert load_config(_write(tmp_path, split.replace("n_tasks = 10", "n_tasks = 5"))).stream.n_tasks == 5
    cfg = load_config(_write(tmp_path, split.replace("n_tasks = 10\n", "")))
    assert cfg.stream.n_tasks is None and cfg.stream.classes_per_task == 2
    with pytest.raises(ConfigError, match="stream.classes_per_task: applies to split"):
        load_config(_write(tmp_path, GOOD.replace("n_tasks = 10", "n_tasks = 10\nclasses_per_task = 2")))
    assert load_config(_write(tmp_path, GOOD.replace("n_tasks = 10\n", ""))).stream.n_tasks == 5


def test_more_samples_per_task_than_the_data_has_is_a_warning_not_a_silent_cap():
    from mesu_snn.build import build_tasks
    from mesu_snn.config import ConfigWarning
    cfg = parse_config({"data": {"dataset": "digits", "train_per_task": 100000, "test_per_task": 20},
                        "stream": {"kind": "permuted", "n_tasks": 1}, "rule": {"name": "sgd"}})
    with pytest.warns(ConfigWarning, match=r"data.train_per_task: 100000 is more than the \d+ train samples of task 0"):
        tasks = build_tasks(cfg)
    assert len(tasks[0].train_y) < 100000


def test_rule_bounds_come_from_the_rules():
    from mesu_snn.bounds import describe
    from mesu_snn.rules import RULES, hyperparameters
    for name in RULES:
        for hp, (default, bound) in hyperparameters(name).items():
            describe(bound)          # every declared bound is known to mesu_snn.bounds
    with pytest.raises(ConfigError, match=r"rule.fisher_samples: must be an integer >= 1, got 2.5"):
        parse_config({"rule": {"name": "ewc", "fisher_samples": 2.5}})
    with pytest.raises(ConfigError, match=r"rule.base: must be one of 'sgd', 'adam'"):
        parse_config({"rule": {"name": "ewc", "base": "rmsprop"}})


def test_strings_with_control_characters_round_trip(tmp_path):
    from hypothesis import given, settings, strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.text(min_size=1).filter(lambda s: s.strip()))
    def check(root):
        cfg = load_config(_write(tmp_path, GOOD))
        cfg.data.root = root
        path = tmp_path / "rt.toml"
        path.write_bytes(dump_toml(cfg).encode("utf-8"))
        again = load_config(path)
        assert again.data.root == root and again.to_dict() == cfg.to_dict()

    check()
    for root in ["a\x00b", "tab\there", "line\nbreak\r\n", "\x7f\x1b[31m", 'quote"back\\slash', "\u2028\ufeff"]:
        cfg = load_config(_write(tmp_path, GOOD))
        cfg.data.root = root
        assert load_config(_write(tmp_path, dump_toml(cfg), "x.toml")).data.root == root
    with pytest.raises(ConfigError, match="data.root: must be valid Unicode"):
        parse_config({"data": {"root": "bad\ud800"}, "rule": {"name": "sgd"}})


def test_split_task_count_follows_the_dataset_classes():
    """A split stream's task count is classes / classes_per_task of *its* dataset: SHD has 20
    classes (10 tasks of 2), the image sets 10; a wrong n_tasks or too many classes per task is
    refused naming the field."""
    base = {"rule": {"name": "sgd"}, "encoder": {"kind": "frames"}}
    ok = parse_config({**base, "data": {"dataset": "shd"}, "stream": {"kind": "split", "n_tasks": 10}})
    assert ok.stream.n_tasks == 10
    with pytest.raises(ConfigError, match=r"stream.n_tasks.*10 tasks for 20 classes"):
        parse_config({**base, "data": {"dataset": "shd"}, "stream": {"kind": "split", "n_tasks": 5}})
    with pytest.raises(ConfigError, match=r"stream.classes_per_task: must be <= 10"):
        parse_config({"rule": {"name": "sgd"}, "data": {"dataset": "mnist"},
                      "stream": {"kind": "split", "classes_per_task": 20}})


def test_samples_set_for_a_mean_mode_rule_warn_once_at_load_naming_the_field(tmp_path):
    import warnings

    from mesu_snn.config import ConfigWarning
    from mesu_snn.rules import RULES

    def load(rule, schedule):
        p = tmp_path / "c.toml"
        p.write_text(f'[data]\ndataset = "digits"\n[rule]\nname = "{rule}"\n[schedule]\n{schedule}\n')
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            cfg = load_config(p)
        return cfg, [str(x.message) for x in w if issubclass(x.category, ConfigWarning)]

    for rule in ("sgd", "adam", "ewc", "si"):
        cfg, msgs = load(rule, "eval_samples = 16\ntrain_samples = 2")
        assert len(msgs) == 2, msgs
        assert msgs[0].startswith("config field schedule.train_samples = 2 is unused: rule " + repr(rule))
        assert msgs[1].startswith("config field schedule.eval_samples = 16 is unused")
        assert "mean network" in msgs[1] and "mesu" in msgs[1] and "bgd" in msgs[1]
        assert cfg.schedule.eval_samples == 16          # kept as written (the trainer uses M = 1)
    # the defaults (as dump_toml writes them into every run's config.toml) do not warn
    assert load("sgd", "eval_samples = 8\ntrain_samples = 4")[1] == []
    cfg, msgs = load("sgd", "eval_every = 0")
    assert msgs == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)     # a run's own config.toml (resume) is quiet
        assert load_config(_write(tmp_path, dump_toml(cfg), "run.toml")).rule.name == "sgd"
    # Bayesian rules use both fields: no warning
    for rule in (n for n, c in RULES.items() if c.bayesian):
        assert load(rule, "eval_samples = 16\ntrain_samples = 2")[1] == [], rule
