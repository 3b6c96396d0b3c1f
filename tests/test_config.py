import pytest
import yaml

from tests.conftest import REPO
from tuneforge.config import dump_config
from tuneforge.errors import ConfigError
from tuneforge.recipes.build import load_config


def _write(tmp_path, data) -> str:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def test_every_shipped_config_is_valid():
    configs = sorted((REPO / "examples").glob("*.yaml"))
    assert configs, "examples/ should ship configs"
    for path in configs:
        cfg = load_config(path)
        assert cfg.data.train or cfg.data.mix


def test_overrides_and_roundtrip(tmp_path):
    path = _write(tmp_path, {"data": {"train": "x.jsonl"}})
    cfg = load_config(
        path, ["train.learning_rate=1e-4", "method.r=4", "method.target_modules=[q_proj, v_proj]"]
    )
    assert cfg.train.learning_rate == 1e-4
    assert cfg.method.r == 4 and cfg.method.target_modules == ["q_proj", "v_proj"]
    again = load_config(_write(tmp_path, yaml.safe_load(dump_config(cfg))))
    assert again == cfg and again.fingerprint() == cfg.fingerprint()


@pytest.mark.parametrize(
    "override, message",
    [
        (["train.lerning_rate=1"], "unknown config key `train.lerning_rate` — did you mean `learning_rate`?"),
        (["method.name=bogus"], "unknown method 'bogus'"),
        (["method.rank=4"], "method `lora` has no option `rank`"),
        (["train.epochs=abc"], "`train.epochs`"),
        (["data.split.validation=0.6", "data.split.test=0.5"], "must be below 1"),
        (["method.name=freeze"], "`method.freeze_layers` is required"),
        (["nonsense"], "is not key=value"),
    ],
)
def test_bad_configs_give_one_line_errors(tmp_path, override, message):
    path = _write(tmp_path, {"data": {"train": "x.jsonl"}})
    with pytest.raises(ConfigError) as e:
        load_config(path, override)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nope.yaml")


def test_fingerprint_ignores_where_and_eval(tmp_path):
    path = _write(tmp_path, {"data": {"train": "x.jsonl"}})
    a = load_config(path, ["run_dir=a", "eval.few_shot=0"])
    b = load_config(path, ["run_dir=b", "eval.few_shot=5"])
    c = load_config(path, ["train.learning_rate=0.1"])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
