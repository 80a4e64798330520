"""A container runtime uses a mosaic mount as its rootfs: runc runs a shell from the composed
minbase view (writable through the overlay upper, as a container's rootfs is)."""

import json
import os
import subprocess
import uuid

import pytest

from conftest import MOSAIC, run

pytestmark = pytest.mark.slow


def test_runc_runs_from_the_mount(minbase_store, tmp_path):
    store, digests, keyring, env = minbase_store
    bundle = tmp_path / "bundle"
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True)
    run([MOSAIC, "mount", "-s", store, "--keyring", keyring, *digests, rootfs,
         "--upper", tmp_path / "upper"], env=env)
    name = f"mosaic-{uuid.uuid4().hex[:12]}"
    try:
        run(["runc", "spec"], cwd=bundle)
        spec = json.loads((bundle / "config.json").read_text())
        spec["process"]["terminal"] = False
        spec["process"]["args"] = ["/bin/sh", "-c",
                                   "cat /etc/debian_version; ls /usr/bin | wc -l; id -u; "
                                   "echo written > /tmp/from-container"]
        spec["root"] = {"path": "rootfs", "readonly": False}
        (bundle / "config.json").write_text(json.dumps(spec))
        p = subprocess.run(["runc", "run", "--bundle", str(bundle), name], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        version, count, uid = p.stdout.split()
        assert version == (rootfs / "etc/debian_version").read_text().strip()
        assert int(count) == len(os.listdir(rootfs / "usr/bin"))
        assert uid == "0"
        # What the container wrote landed in the upper layer, not in any fragment.
        assert (tmp_path / "upper" / "tmp" / "from-container").read_text() == "written\n"
    finally:
        subprocess.run(["runc", "delete", "-f", name], capture_output=True)
        subprocess.run([MOSAIC, "umount", str(rootfs)], env=env, capture_output=True)
