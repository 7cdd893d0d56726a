"""Placeholder: replaced by its owner (API keys, body limits)."""


def install_security(app, settings):
    return None
