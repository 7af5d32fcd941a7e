# Thin aliases for ./dev, which does its own set-up (venv, apt packages).
.PHONY: demo test bench check clean
demo:
	./dev demo
test:
	./dev test
bench:
	./dev bench
check:
	./dev check
clean:
	rm -rf .venv build *.egg-info .pytest_cache bench/results
# On a Raspberry Pi: install the agent as a systemd service (docs/install.md).
#   sudo make install ARGS="--blynk-token TOKEN --enable-i2c"
.PHONY: install
install:
	./install.sh $(ARGS)
