-- The tutorial's blog: users, posts, comments. Deterministic data.
DROP TABLE IF EXISTS comments, posts, users;
CREATE TABLE users (
    id serial PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL UNIQUE
);
CREATE TABLE posts (
    id serial PRIMARY KEY,
    user_id int NOT NULL REFERENCES users(id),
    title text NOT NULL,
    body text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE comments (
    id serial PRIMARY KEY,
    post_id int NOT NULL REFERENCES posts(id),
    user_id int NOT NULL REFERENCES users(id),
    body text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX posts_created_at ON posts (created_at DESC);
CREATE INDEX comments_post_id ON comments (post_id);
INSERT INTO users (name, email)
    SELECT 'user ' || g, 'user' || g || '@example.com' FROM generate_series(1, 200) g;
INSERT INTO posts (user_id, title, body, created_at)
    SELECT 1 + (g * 7) % 200, 'post ' || g, repeat('text ', 40), timestamptz '2026-01-01' + g * interval '1 hour'
    FROM generate_series(1, 2000) g;
INSERT INTO comments (post_id, user_id, body, created_at)
    SELECT 1 + (g * 13) % 2000, 1 + (g * 11) % 200, 'comment ' || g, timestamptz '2026-01-01' + g * interval '1 minute'
    FROM generate_series(1, 20000) g;
ANALYZE;
