-- Blog endpoint "a user's posts" (the 200 most active users).
\set uid random(1, 200)
SELECT id, title, created_at FROM posts WHERE author_id = :uid ORDER BY created_at DESC LIMIT 20;
