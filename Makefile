# The two commands: `make dev` runs Switchboard locally, `make test` runs every test.
# Both install whatever is missing first (scripts/setup.sh), so they work on a fresh machine.
.PHONY: dev test demo bench build deploy check lint fmt
dev:
	bash scripts/dev.sh
test:
	bash scripts/test.sh
demo:
	bash scripts/demo.sh
bench:
	bash bench/run.sh
build:
	bash scripts/build.sh
deploy:
	bash scripts/build.sh && . scripts/env.sh && wrangler deploy
lint:
	bash scripts/setup.sh && . scripts/env.sh && cargo fmt --all -- --check && \
	cargo clippy --all-targets -- -D warnings && \
	cargo clippy --lib --target wasm32-unknown-unknown -- -D warnings
fmt:
	cargo fmt --all
check: test lint
