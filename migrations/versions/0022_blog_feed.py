"""the clinic's blog in each issue: blog_feed (the feed's state), blog_posts (the posts
read from it, the cache newsletters use), rhythms.fill_from_blog

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07 02:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0022'
# Rechain onto 0022 (the media library) when both are merged.
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'blog_feed',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('url', sa.String(length=2000), nullable=False),
        sa.Column('checked_at', sa.DateTime(), nullable=True),
        sa.Column('error', sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_blog_feed')),
    )
    op.create_table(
        'blog_posts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('post_key', sa.String(length=64), nullable=False),
        sa.Column('title', sa.String(length=300), nullable=False),
        sa.Column('link', sa.String(length=2000), nullable=False),
        sa.Column('summary', sa.Text(), nullable=False),
        sa.Column('image_url', sa.String(length=2000), nullable=True),
        sa.Column('published_at', sa.DateTime(), nullable=False),
        sa.Column('fetched_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_blog_posts')),
        sa.UniqueConstraint('post_key', name=op.f('uq_blog_posts_post_key')),
    )
    op.create_index('ix_blog_posts_published_at', 'blog_posts', ['published_at'])
    with op.batch_alter_table('rhythms') as batch_op:
        batch_op.add_column(sa.Column('fill_from_blog', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('rhythms') as batch_op:
        batch_op.drop_column('fill_from_blog')
    op.drop_index('ix_blog_posts_published_at', table_name='blog_posts')
    op.drop_table('blog_posts')
    op.drop_table('blog_feed')
