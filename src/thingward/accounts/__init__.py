"""People and what they may do: accounts, passwords, second factors, sign-in, sessions, API tokens, sharing.

Every door (CLI, REST API, web pages) calls `thingward.accounts.service.Accounts` and the functions of
`sharing`; none of them decides anything on its own.
"""
