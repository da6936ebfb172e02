"""The demo's scripted agent: reads its prompt file, makes one commit for its stage, exits 0.

Usage (as an agent_command): python3 demo_agent.py {{prompt_file}} {{stage}} {{issue.number}}
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    prompt_file, stage, number = (sys.argv[1:] if argv is None else argv)[:3]
    title = Path(prompt_file).read_text(encoding="utf-8").splitlines()[0]
    print(f"demo agent: {title} -- stage {stage}", flush=True)
    time.sleep(0.3)  # long enough to be seen in the dashboard
    notes = Path("NOTES.md")
    with notes.open("a", encoding="utf-8") as out:
        out.write(f"- {stage}: done for issue #{number}\n")
    identity = ["-c", "user.name=Demo Agent", "-c", "user.email=agent@example.com"]
    subprocess.run(["git", *identity, "add", "NOTES.md"], check=True)
    subprocess.run(["git", *identity, "commit", "-q", "-m", f"demo: {stage} (#{number})"], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
