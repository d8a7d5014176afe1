"""``DLHubClient``: the DLHub SDK's client (dlhub_sdk 2.x) over a dlhub-hpc hub.

A notebook written for DLHub runs by changing ``from dlhub_sdk.client import DLHubClient``
to ``from dlhub_hpc.compat import DLHubClient``: the same calls, argument orders and
return shapes (search results are whole ``dlhub.json`` records). What only DLHub's cloud
did (Globus login, container builds, publishing from GitHub) raises ``NotSupportedHere``
saying what replaces it here.
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from dlhub_hpc.client import USE_CLIENT_DEFAULT, Client
from dlhub_hpc.compat import records as rec
from dlhub_hpc.compat.publishing import publish_record
from dlhub_hpc.errors import ConfigError, DlhubHpcError, NotSupportedHere, ServableNotFound
from dlhub_hpc.servable.spec import ServableSpec
from dlhub_hpc.servable.types import check_value

logger = logging.getLogger(__name__)

_SEARCH_MAX = 1000  # the hub's largest search page
_AUTHORIZERS = ("dlh_authorizer", "search_authorizer", "fx_authorizer", "openid_authorizer",
                "sl_authorizer")
_LOGIN_KWARGS = ("no_local_server", "no_browser")


class DLHubFuture(Future[Any]):
    """An asynchronous run (DLHub's ``DLHubFuture``): ``task_id`` names it for
    ``get_task_status`` and ``get_result``."""

    def __init__(self, task_id: str, debug: bool) -> None:
        super().__init__()
        self.task_id = task_id
        self.debug = debug
        self.started = time.monotonic()
        self.set_running_or_notify_cancel()

    def stop(self) -> None:
        """Stop waiting for the task (its request still runs on the hub)."""
        if not self.done():
            self.set_exception(DlhubHpcError("Cancelled by user"))


class TaskPending(DlhubHpcError):
    """``get_result`` of a task still running; ``args[0]`` is its status, as DLHub's was."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} is still running; wait on the future DLHubClient"
                         ".run(..., asynchronous=True) returned, or call get_result later",
                         task_id=task_id)
        self.args = ("running",)

    def __str__(self) -> str:
        return self.message


class DLHubClient:
    """DLHub's client on a hub: ``DLHubClient()`` finds the hub as ``Client()`` does (or
    pass ``address=`` or an open ``client=``); ``workers`` is how many warm workers
    ``publish_servable`` starts for what it publishes (0: none)."""

    def __init__(self, dlh_authorizer: Any = None, search_authorizer: Any = None,
                 fx_authorizer: Any = None, openid_authorizer: Any = None,
                 sl_authorizer: Any = None, http_timeout: float | None = None,
                 force_login: bool = False, *, address: str | None = None,
                 client: Client | None = None, workers: int = 1, **kwargs: Any) -> None:
        given = [n for n, a in zip(_AUTHORIZERS, (dlh_authorizer, search_authorizer,
                                                   fx_authorizer, openid_authorizer,
                                                   sl_authorizer), strict=True) if a]
        if given:
            raise NotSupportedHere(
                f"Globus authorizers ({', '.join(given)}) are not used here: the hub knows "
                "you by your key pair ($DLHUB_HPC_KEYS or ~/.dlhub-hpc/keys); call "
                "DLHubClient() without them", arguments=given)
        unknown = sorted(set(kwargs) - set(_LOGIN_KWARGS))
        if unknown:
            raise ConfigError(f"DLHubClient takes no {', '.join(unknown)}; it takes "
                              "http_timeout, address, client and workers", arguments=unknown)
        if workers < 0:
            raise ConfigError(f"workers must be 0 or more, not {workers}")
        self._own = client is None
        timeout = http_timeout if http_timeout is not None else 60.0
        self._client = client or Client(address, timeout=timeout)
        self.workers = workers
        self.fx_cache: dict[str, str] = {}  # DLHub's funcX cache; nothing to cache here
        self._tasks: dict[str, DLHubFuture] = {}

    def __repr__(self) -> str:
        return f"DLHubClient(client={self._client!r}, workers={self.workers!r})"

    def __enter__(self) -> DLHubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the hub connection this client opened (not one passed in)."""
        if self._own:
            self._client.close()

    # -- who, and what cannot work here --

    def get_username(self) -> str:
        """The identity the hub knows this client's key as (DLHub's namespace)."""
        return str(self._client.whoami()["identity"])

    def logout(self) -> None:
        raise NotSupportedHere("there is no Globus login to end: the hub knows you by your "
                               "key pair; 'dlhub-hpc keys show' shows it")

    def publish_repository(self, repository: str) -> str:
        raise NotSupportedHere(
            f"the hub does not fetch or build repositories ({repository}); clone it and "
            "call publish_servable(record, directory=CLONE) with its dlhub.json, or "
            "'dlhub-hpc import-dlhub CLONE/dlhub.json DIR' and 'dlhub-hpc publish DIR'")

    def easy_publish(self, *args: Any, **kwargs: Any) -> str:
        raise NotSupportedHere(
            "easy_publish builds DLHub SDK models; describe the model with the SDK (or "
            "dlhub_hpc.servable.builders, e.g. PythonFunctionServable) and call "
            "publish_servable(model)")

    @property
    def query(self) -> Any:
        raise NotSupportedHere("DLHub's Globus Search helper is not available; use "
                               "search(query, advanced=True) with field:value AND ... terms")

    def clear_funcx_cache(self, servable: str | None = None) -> dict[str, str]:
        """Nothing is cached here (there are no funcX ids); kept for old notebooks."""
        self.fx_cache = {}
        return self.fx_cache

    # -- running --

    def run(self, name: str, inputs: Any, parameters: dict[str, Any] | None = None,
            asynchronous: bool = False, debug: bool = False, validate_input: bool = False,
            async_wait: float = 5, timeout: float | None = None) -> Any:
        """Run servable ``name`` (``owner/name``) on ``inputs``; ``parameters`` override
        its defaults. Returns the output; with ``debug``, ``(output, metadata)``; with
        ``asynchronous``, a ``DLHubFuture``. ``async_wait`` is unused: the hub answers
        when done, nothing polls."""
        rec.split_name(name)
        if validate_input:
            self._validate_input(name, inputs)
        if asynchronous:
            return self._submit(name, inputs, parameters, debug)
        started = time.monotonic()
        wait = USE_CLIENT_DEFAULT if timeout is None else timeout
        out = self._client.run(name, inputs, parameters=parameters, timeout=wait)
        return (out, _metadata(started)) if debug else out

    def _submit(self, name: str, inputs: Any, parameters: dict[str, Any] | None,
                debug: bool) -> DLHubFuture:
        task = DLHubFuture(str(uuid.uuid4()), debug)
        inner = self._client.submit(name, inputs, parameters=parameters)

        def settle(done: Future[Any]) -> None:
            if task.done():  # stopped by the user
                return
            error = done.exception()
            if error is not None:
                task.set_exception(error)
            else:
                value = done.result()
                task.set_result((value, _metadata(task.started)) if debug else value)

        inner.add_done_callback(settle)
        self._tasks[task.task_id] = task
        return task

    def run_serial(self, servables: list[str], inputs: Any, async_wait: float = 5) -> Any:
        """Run each servable on the output of the one before."""
        data = inputs
        for servable in servables:
            data = self.run(servable, data)
        return data

    def _task(self, task_id: str) -> DLHubFuture:
        task = self._tasks.get(task_id)
        if task is None:
            raise rec.BadQuery(f"no task {task_id!r}: tasks are those this client started "
                               "with run(..., asynchronous=True)", task_id=task_id)
        return task

    def get_task_status(self, task_id: str) -> dict[str, Any]:
        """``{"task_id", "pending", "status"}``, with ``result`` or ``exception`` when done."""
        task = self._task(task_id)
        if not task.done():
            return {"task_id": task_id, "pending": True, "status": "running"}
        error = task.exception()
        if error is not None:
            return {"task_id": task_id, "pending": False, "status": "failed",
                    "exception": error}
        return {"task_id": task_id, "pending": False, "status": "success",
                "result": task.result()}

    def get_result(self, task_id: str, verbose: bool = False) -> Any:
        """A finished task's ``(output, metadata)``, as DLHub's; with ``verbose``,
        ``((output, metadata), milliseconds)``. A running task raises ``TaskPending``, a
        failed one its error."""
        task = self._task(task_id)
        if not task.done():
            raise TaskPending(task_id)
        value = task.result()
        meta = _metadata(task.started)
        pair = value if task.debug else (value, meta)
        return (pair, meta["timing"] * 1000) if verbose else pair

    def _validate_input(self, name: str, inputs: Any) -> None:
        """Check ``inputs`` against the declared input type here, before sending (the hub
        checks again); ``InvalidInput`` says where they differ."""
        spec = ServableSpec.from_data(self._describe(name)["spec"], name)
        methods = spec.servable.methods
        method = "run" if "run" in methods else next(iter(methods))
        check_value(methods[method].input, inputs)

    # -- finding --

    def _describe(self, name: str) -> dict[str, Any]:
        rec.split_name(name)
        try:
            described: dict[str, Any] = self._client.describe(name)
        except ServableNotFound as exc:
            raise rec.NoSuchServable(f"No such servable: {name}", servable=name) from exc
        return described

    def describe_servable(self, name: str) -> dict[str, Any]:
        """The servable's latest record, as DLHub's search index held it."""
        described = self._describe(name)
        ref = f"{described['name']}@{described['version']}"
        return rec.dlhub_record(self._client.export_dlhub(ref), described)

    def describe_methods(self, name: str, method: str | None = None) -> dict[str, Any]:
        """Its methods (without ``method_details``), or the one named ``method``."""
        return rec.method_details(self.describe_servable(name), method)

    def _records(self, text: str = "", *, only_latest: bool = True,
                 **filters: Any) -> list[dict[str, Any]]:
        """DLHub records of the servables the hub finds (every version unless only_latest)."""
        hits = self._client.search(text, limit=_SEARCH_MAX, **filters)
        out = []
        for hit in hits:
            out.append(rec.dlhub_record(self._client.export_dlhub(hit["ref"]), hit))
            if only_latest:
                continue
            for v in self._client.describe(hit["name"])["versions"]:
                if v["version"] != hit["version"]:
                    ref = f"{hit['name']}@{v['version']}"
                    summary = hit | {"version": v["version"], "ref": ref,
                                     "published_at": v["published_at"]}
                    out.append(rec.dlhub_record(self._client.export_dlhub(ref), summary))
        return out

    def get_servables(self, only_latest_version: bool = True) -> list[dict[str, Any]]:
        """Every servable this caller may see, as DLHub records."""
        found = self._records(only_latest=only_latest_version)
        found.sort(key=lambda r: -r["dlhub"]["publication_date"])
        found.sort(key=lambda r: r["dlhub"]["name"], reverse=True)
        found.sort(key=lambda r: r["dlhub"]["owner"])
        return found

    def list_servables(self) -> list[str]:
        """Every servable's ``owner/name``."""
        return [r["dlhub"]["shorthand_name"] for r in self.get_servables()]

    def search(self, query: str, advanced: bool = False, limit: int | None = None,
               only_latest: bool = True) -> list[dict[str, Any]]:
        """Free text over titles, descriptions, creators, domains and DOIs; with
        ``advanced``, ``field:value`` terms joined by AND (``records.QUERY_FIELDS``)."""
        text, terms = rec.parse_advanced(query) if advanced else (query, [])
        filters = {k: v.strip('"') for f, v in terms
                   for k in [{"dlhub.owner": "owner", "dlhub.domains": "domain"}.get(f)] if k}
        found = rec.keep(self._records(text, only_latest=only_latest, **filters), terms)
        return found[:limit]

    def search_by_servable(self, servable_name: str | None = None, owner: str | None = None,
                           version: int | None = None, only_latest: bool = True,
                           limit: int | None = None, get_info: bool = False) -> Any:
        """By name, owner and version (DLHub's: the publication date in milliseconds;
        here also the version number)."""
        if not servable_name and not owner and not version:
            raise ValueError("One of 'servable_name', 'owner', or 'publication_date' is "
                             "required.")
        found = self._records(owner=owner, only_latest=False)
        found = [r for r in found
                 if (not servable_name or r["dlhub"]["name"] == servable_name.lower())
                 and (not version or int(version) in (r["dlhub"]["publication_date"],
                                                      _version_of(r)))]
        if only_latest:
            found = rec.latest(found)
        found = found[:limit]
        return (found, {"total_query_matches": len(found)}) if get_info else found

    def search_by_authors(self, authors: str | list[str], match_all: bool = True,
                          limit: int | None = None, only_latest: bool = True
                          ) -> list[dict[str, Any]]:
        """Servables with these creators ("Family, Given"; all of them unless not
        ``match_all``)."""
        found = rec.by_authors(self._records(only_latest=only_latest), authors, match_all)
        return found[:limit]

    def search_by_related_doi(self, doi: str, limit: int | None = None,
                              only_latest: bool = True) -> list[dict[str, Any]]:
        """Servables that name ``doi`` (a paper's, or their own)."""
        return self._records(doi=doi, only_latest=only_latest)[:limit]

    def search_by_publication(self, doi: str, limit: int | None = None,
                              only_latest: bool = True) -> list[dict[str, Any]]:
        """The servables of a publication, by its DOI (``search_by_related_doi``)."""
        return self.search_by_related_doi(doi, limit, only_latest)

    # -- publishing --

    def publish_servable(self, model: Any, directory: str | Path | None = None) -> str:
        """Publish a DLHub SDK model (or its ``to_dict()`` record) with its files, owned by
        this caller; starts ``workers`` warm workers for it. Relative file paths are
        read from ``directory`` (default: the working directory). Returns
        ``owner/name@version``."""
        identity = self.get_username()
        published = publish_record(self._client, model, identity, directory)
        ref = f"{published['name']}@{published['version']}"
        if self.workers:
            self._client.start_workers(ref, self.workers)
        return ref


def _metadata(started: float) -> dict[str, Any]:
    # DLHub's run metadata; output is not captured here (a worker's log holds it)
    return {"success": True, "timing": time.monotonic() - started}


def _version_of(record: dict[str, Any]) -> int:
    return int(str(record["dlhub"]["id"]).rpartition("@")[2].partition("#")[0] or 0)
