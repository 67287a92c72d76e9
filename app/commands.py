from faust.cli import option
from app.main import app
import sys

@app.command(option("--quiet", is_flag=True, default=False), option("--json", "as_json", is_flag=True, default=False), option("--x", type=int, default=1))
async def inject(self, quiet: bool, as_json: bool, x: int) -> None:
    """Doc of inject."""
    print("hello", quiet, as_json, x, self.quiet, self.json)
    if x == 2:
        print("inject: error: bad", file=sys.stderr)
        raise SystemExit(2)
    if x == 3:
        raise RuntimeError("boom")
