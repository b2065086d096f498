"""The example domain's write side: a depository's securities, accounts and corporate actions."""
