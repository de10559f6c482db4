"""The README's Python blocks run as written (a feature is done when it works from the README)."""

import pathlib
import re

import jax

README = pathlib.Path(__file__).parent.parent / "README.md"


def test_readme_python_blocks_run_in_order(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3
    namespace = {}  # blocks build on the ones before (imports, model, x, y), as a reader's do
    # The README is written as users write JAX (b broadcast against (batch, n)), so the suite's
    # rank-promotion guard is lifted here.
    with jax.numpy_rank_promotion("allow"):
        for i, block in enumerate(blocks):
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)  # noqa: S102
