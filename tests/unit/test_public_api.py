"""The public API is what ``__all__`` says, and all of it is importable (as httpx checks)."""

from __future__ import annotations

import dlhub_hpc


def test_all_names_resolve() -> None:
    for name in dlhub_hpc.__all__:
        assert getattr(dlhub_hpc, name) is not None, name


def test_every_public_error_is_exported() -> None:
    from dlhub_hpc import errors

    public = {
        name for name, obj in vars(errors).items()
        if isinstance(obj, type) and issubclass(obj, errors.DlhubHpcError)
    }
    assert public <= set(dlhub_hpc.__all__), public - set(dlhub_hpc.__all__)


def test_client_import_does_not_pull_in_parsl() -> None:
    import subprocess
    import sys

    code = "import sys, dlhub_hpc; dlhub_hpc.Client; print('parsl' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_remote_client_and_workflow_names_import_neither_parsl_nor_globus() -> None:
    import subprocess
    import sys

    code = (
        "import sys, uuid, dlhub_hpc\n"
        "dlhub_hpc.RemoteClient(uuid.uuid4(), uuid.uuid4())\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'parsl', 'globus_compute_sdk',"
        " 'globus_compute_endpoint', 'globus_sdk'}))\n"
        "dlhub_hpc.DLHubExecutor\n"
        "print('parsl' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "True"]
