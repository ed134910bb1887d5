"""`python -m lorafleet ...` runs the CLI (also: `accelerate launch -m lorafleet train RECIPE.yaml`)."""

from lorafleet.cli.app import main

if __name__ == "__main__":
    main()
