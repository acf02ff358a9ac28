"""The router's services: what it decides, apart from HTTP. Handlers translate requests into calls on
these and their results (or typed errors) into answers; a service never imports a route.

- functions: the function table and its changes (deploy, rollback, remove, restore)
- training: training jobs, and rolling a function forward when one succeeds
- keys: API keys (verify, create, revoke, rotate) and tenants' default limits
- admission: the limits that apply to one invocation, checked and settled
- accounting: what each invocation cost, in the usage ledger and the metrics
"""
