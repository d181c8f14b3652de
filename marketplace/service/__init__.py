"""Doctor service (party 1, :8081): API, blind decisions, research CSV and the web page."""

from marketplace.service.app import create_app
from marketplace.service.settings import MarketplaceSettings

__all__ = ["MarketplaceSettings", "create_app"]
