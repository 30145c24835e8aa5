-- Blog endpoint "one post with its comments" (the 200 most read posts).
\set id random(1, 200)
SELECT p.id, p.title, p.content, u.name AS author, c.id AS comment_id, c.content AS comment, cu.name AS commenter
FROM posts p
JOIN users u ON u.id = p.author_id
LEFT JOIN comments c ON c.post_id = p.id
LEFT JOIN users cu ON cu.id = c.author_id
WHERE p.id = :id
ORDER BY c.created_at;
