"""Prefect settings for a run, shipped to its workers as objects.

Fenced here: ``SettingsContext.serialize`` is overridden to return the settings
objects themselves, where Prefect documents plain data; prefect-dask passes what it
returns to ``hydrated_context`` on the worker, which accepts the objects as they are.
tests/e2e/local/test_internals.py checks both ends on the locked versions.

prefect-dask sends the runner's settings with every task: it serialises them to a
dict for each submission, and each task on a worker rebuilds a ``Settings`` model from
that dict, which re-reads the environment, dotenv and profile files. Together that
measured about 50 ms per submission on the runner and 90 ms per task on a worker, most
of a small task's time.

Inside :func:`run_settings` the settings travel instead as the very ``Settings`` and
``Profile`` objects: they pickle in about 3 ms, and a worker takes them as they are.
The values are the same, so is the channel (the run's TLS connection to the
scheduler): nothing is put in any environment. A ``temporary_settings`` block inside
the flow makes an ordinary context, which prefect-dask ships the usual way.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from prefect.context import SettingsContext, get_settings_context

if TYPE_CHECKING:
    from prefect.settings import Settings


class ShippedSettingsContext(SettingsContext):
    """A settings context whose serialised form is its own models.

    Workers run the runner's Prefect version (the same environment, or the same
    image), so the models unpickle there as they are.
    """

    def serialize(self, include_secrets: bool = True) -> dict[str, Any]:
        """The context as ``SettingsContext(**...)`` takes it back, cheaply.

        Parameters
        ----------
        include_secrets
            ``False`` falls back to Prefect's masked, plain-data form.
        """
        if not include_secrets:
            return super().serialize(include_secrets=False)
        return {"profile": self.profile, "settings": self.settings}


def settings_with(updates: Mapping[Any, Any] | None = None) -> "Settings":
    """The settings in force now, with ``updates``: what :func:`run_settings` enters.

    Building them reads the environment, dotenv and profile files (about 30 ms), so a
    caller with idle time, such as a runner waiting for its API, builds them ahead.

    Parameters
    ----------
    updates
        Settings, or their environment variable names (``PREFECT_API_URL``), to change.
    """
    import prefect.settings

    resolved = {
        getattr(prefect.settings, key) if isinstance(key, str) else key: value
        for key, value in (updates or {}).items()
    }
    return get_settings_context().settings.copy_with_update(updates=resolved)


@contextmanager
def run_settings(updates: "Mapping[Any, Any] | Settings | None" = None) -> Iterator["Settings"]:
    """Like ``prefect.settings.temporary_settings(updates=...)``, cheap to ship.

    Parameters
    ----------
    updates
        Settings, or their environment variable names (``PREFECT_API_URL``), to
        change for the duration of the block; or settings built by
        :func:`settings_with`, entered as they are.

    Yields
    ------
    Settings
        The settings in force inside the block.
    """
    from prefect.settings import Settings

    settings = updates if isinstance(updates, Settings) else settings_with(updates)
    with ShippedSettingsContext(profile=get_settings_context().profile, settings=settings):
        yield settings
