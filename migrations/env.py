"""Alembic environment: migrations run on mailer's own engine (WAL, busy timeout)."""
from alembic import context
from sqlalchemy.engine import make_url

from mailer import models  # noqa: F401  (registers the tables)
from mailer.db import Base, comparison_options, make_engine

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True,
                      **comparison_options(make_url(config.get_main_option("sqlalchemy.url")).get_backend_name()))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                          **comparison_options(connection.dialect.name))
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
