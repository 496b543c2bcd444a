"""The README's quick start runs exactly as written."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_opens_with_the_two_commands():
    head = README.read_text().splitlines()[:6]
    block = "\n".join(head)
    assert "make demo" in block and "make test" in block


def test_readme_quick_start_runs():
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README must contain a python quick start"
    ns: dict = {}
    exec(compile(blocks[0], "README.md quick start", "exec"), ns)  # noqa: S102 - our own README
    metrics, out = ns["metrics"], ns["out"]
    assert metrics["skipped"] == 0.0 and metrics["phase"] == "rmmd"
    assert out.x0.shape == (4, 3, 16, 16) and out.nfe == 8
