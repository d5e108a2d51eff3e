"""The demo and the local brokers it (and the tests) start. Runtime code never imports
`streams.demo.brokers`.
"""
