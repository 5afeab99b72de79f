"""The web UI served by ``dagengine serve`` at ``/ui/`` (static files in ``static/``) and the
API routes it adds (:mod:`dagengine.api.ui.routes`). See docs/ui.md."""
