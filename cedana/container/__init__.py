"""Containers: a process tree plus what its runtime set up around it.

Layout::

    state.py       runc's state.json: init pid, bundle, cgroups, namespaces, stdio, status
    options.py     config.json + the live container -> CRIU's dump options (runc's choices)
    mounts.py      which mounts are external, under runc's keys
    namespaces.py  namespaces shared with the outside (extRootNetNS...)
    cgroups.py     cgroup v1 / hybrid / v2: freezer, v1 hierarchies
    command.py     the runc command (restore, delete, exec)
    runc.py        RuncContainer: checkpoint and restore, rootfs changes included
    restore.py     a runc restore: plan_restore (every check, nothing made), then execute
    bundle.py      the bundles a restore makes: private dirs, overlay, new config.json
    confine.py     what a container checkpoint may ask of the host at restore (Grants)
"""

from cedana.container.bundle import DEFAULT_BUNDLES
from cedana.container.confine import Grants
from cedana.container.runc import RuncContainer
from cedana.container.state import RuncState

__all__ = ["DEFAULT_BUNDLES", "Grants", "RuncContainer", "RuncState"]
