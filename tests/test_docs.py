"""The documentation: README examples run and learn, every public name has an
API entry. (The site's strict build is `make docs`, part of `make test`.)"""

import os
import re

import keras
import pytest

import keras_lars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*path):
    with open(os.path.join(ROOT, *path), encoding="utf-8") as f:
        return f.read()


def _python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_is_short():
    assert len(_read("README.md").splitlines()) <= 200


def test_getting_started_shows_the_readme_examples():
    assert _python_blocks(_read("README.md")) == _python_blocks(_read("docs", "getting-started.md"))


@pytest.mark.parametrize("index", [0, 1], ids=["lars", "clars"])
def test_readme_example_trains(index):
    block = _python_blocks(_read("README.md"))[index]
    assert ("CLARS(" in block) == (index == 1)
    namespace = {}
    exec(compile(block, f"README.md python block {index}", "exec"), namespace)
    model, x, y = namespace["model"], namespace["x"], namespace["y"]
    assert type(model.optimizer).__name__ == ("CLARS" if index else "LARS")
    assert int(model.optimizer.iterations) == 40
    _, accuracy = model.evaluate(x, y, verbose=0)
    assert accuracy > 0.85  # chance is 0.5; both reach about 0.95
    keras.backend.clear_session()


def test_every_public_name_has_an_api_entry():
    api = _read("docs", "api.md")
    documented = set(re.findall(r"^\.\. auto\w+:: (keras_lars[\w.]*)", api, flags=re.M))
    for name in keras_lars.__all__:
        qualified = f"keras_lars.{name}"
        assert qualified in documented, f"{qualified} has no autodoc directive in docs/api.md"
    for name in keras_lars.schedules.__all__:
        assert "keras_lars.schedules" in documented and name in api
    assert "keras_lars.train.config" in api and ":func: build_parser" in api
