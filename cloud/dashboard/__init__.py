"""The operator dashboard: server-rendered pages under ``/ui`` with a little vanilla JS.

Everything it needs (templates, CSS, JS) ships in this package; nothing is fetched
from the network at run time.
"""

from cloud.dashboard.routes import install_dashboard

__all__ = ["install_dashboard"]
