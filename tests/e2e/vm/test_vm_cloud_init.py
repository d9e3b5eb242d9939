"""The boot script a VM gets from ``flowrig vm cloud-init``, run by a real shell against
stand-in commands (no cloud, no Docker). Rendering, replay plans and bad input are in
tests/unit/test_vm_cloud_init.py.
"""

from __future__ import annotations

import subprocess

from flowrig.backends import get_backend
from flowrig.backends.vm import cloudinit, launcher

# --- the boot script itself, run by a real shell against stand-in commands ------------------
STAND_INS = {
    # A registry that refuses the first pull (a pull right not yet in force), then serves.
    "docker": """#!/bin/sh
echo "$*" >> "$LOG"
case "$1" in
  pull) [ -e "$STATE/pulled-once" ] && exit 0; touch "$STATE/pulled-once"; exit 1 ;;
  login) cat > "$STATE/login-password" ;;
esac
exit 0
""",
    "aws": "#!/bin/sh\necho \"aws $*\" >> \"$LOG\"\nprintf token\n",
    "sleep": "#!/bin/sh\nexit 0\n",
}


def test_the_boot_script_logs_in_again_and_retries_a_refused_pull_then_runs_the_role(tmp_path):
    image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/flows:1"
    role = launcher.worker_role(
        launcher.RoleSettings(run_id="r1", image=image, registry=get_backend("ec2").registry_login(image),
                              install_docker=False),
        "tls://10.0.0.5:8786", "flowrig-r1-worker-1",
    )
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in STAND_INS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    script = tmp_path / "flowrig-role"
    script.write_text(cloudinit.role_script(role))
    log = tmp_path / "calls"
    done = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "LOG": str(log), "STATE": str(state)})
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    pulls = [c for c in calls if c.startswith("pull ")]
    logins = [c for c in calls if c.startswith("login ")]
    assert pulls == [f"pull {image}"] * 2 and len(logins) == 2
    assert logins[0] == "login --username AWS --password-stdin 123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    assert (state / "login-password").read_text() == "token"  # on stdin, never on a command line
    assert "aws ecr get-login-password --region eu-west-1" in calls
    # The role runs last, exactly as the model says.
    assert calls[-1] == " ".join([*cloudinit.container_arguments(role)[1:], image, *role.command])


def test_the_boot_script_gives_up_on_an_image_it_can_never_pull(tmp_path):
    role = launcher.scheduler_role(launcher.RoleSettings(run_id="r2", image="flows:missing", install_docker=False))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text("#!/bin/sh\n[ \"$1\" = pull ] && exit 1\nexit 0\n")
    (bin_dir / "sleep").write_text(STAND_INS["sleep"])
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    script = tmp_path / "flowrig-role"
    script.write_text(cloudinit.role_script(role))
    done = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert done.returncode == 1
    assert done.stderr.strip() == "flowrig: could not pull flows:missing"
