"""The local stack on loopback: private servers for `make run` and the tests."""
